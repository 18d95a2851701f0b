"""Secrets never stored: a real materialization with credentials in the MLflow URI and an API key in its
variable leaves neither in Dagster's run storage (decompressed snapshots, event log), compute logs, pipeline
storage, the MLflow store or the process's output; URL settings with credentials are refused by name; an
unreachable MLflow server's error carries no password."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from dagster import DagsterInstance, materialize
from dagster._core.instance.ref import InstanceRef

from alignment_dagster.core.redaction import RedactedError
from alignment_dagster.core.settings import URL_VARIABLES, Settings, SettingsError
from alignment_dagster.definitions import build_resources
from alignment_dagster.specs.constitution import parse_constitution
from tests.backend_fixtures import free_port
from tests.conftest import REPO, SHARED_DATA
from tests.processes import stop_session
from tests.secrets_scan import scan

PASSWORD = "mlflowPw7Qx2RkZ9"  # ASCII letters and digits: no escaping can hide it from the scan
API_KEY = "sk-judgeKey4Lp8Vt3Nw6"
N_PAIRS = 1
SMALL_CONSTITUTION = """
name: secrets-check
principles:
  - id: harmless
    text: Choose the response that is less harmful.
  - id: helpful
    text: Choose the response that is more helpful.
"""


def test_the_scan_finds_a_secret_wherever_it_is_hidden(tmp_path: Path) -> None:
    """The scan is only worth its zero if it can fail: compressed in a SQLite blob, as JSON text, in a
    compute log, in a Parquet value."""
    import pandas as pd

    db = tmp_path / "runs.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE snapshots (id TEXT, snapshot_body BLOB)")
        con.execute(
            "INSERT INTO snapshots VALUES (?, ?)", ("x", zlib.compress(json.dumps({"u": PASSWORD}).encode()))
        )
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "step.err").write_text(f"Traceback ... {API_KEY}\n")
    pd.DataFrame({"v": [f"url http://u:{PASSWORD}@h"]}).to_parquet(tmp_path / "t.parquet")
    assert scan(PASSWORD, paths=[db]) == [f"{db}:snapshots.snapshot_body"]
    assert scan(API_KEY, paths=[tmp_path]) == [str(tmp_path / "logs" / "step.err")]
    assert str(tmp_path / "t.parquet") in scan(PASSWORD, paths=[tmp_path / "t.parquet"])
    assert scan(API_KEY, texts={"stderr": f"x{API_KEY}y"}) == ["stderr"]
    assert scan(API_KEY, paths=[db], texts={"stdout": "nothing"}) == []


@pytest.mark.parametrize("var", URL_VARIABLES)
def test_url_settings_with_credentials_are_refused_by_name(tmp_path: Path, var: str) -> None:
    url = f"https://ann:{PASSWORD}@host.example/x" if var != "ALIGNMENT_ROOT" else f"s3://k:{PASSWORD}@b/p"
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"ALIGNMENT_ROOT": str(tmp_path), var: url})
    assert str(err.value).startswith(f"{var}: credentials inside the URL are refused")
    assert PASSWORD not in str(err.value)
    query = Settings.from_env  # a secret-named query value counts as a credential too
    with pytest.raises(SettingsError, match=var):
        query({"ALIGNMENT_ROOT": str(tmp_path), var: f"https://host.example/x?api_key={API_KEY}"})


def test_an_unreachable_mlflow_server_never_shows_its_password(
    tmp_path: Path, capfd: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow puts its tracking URI, password included, into the exception it raises; the run's event log,
    its stderr and the error itself get it redacted, and the URI is configuration by variable name only."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setenv("ALIGNMENT_MLFLOW_URI", f"http://ann:{PASSWORD}@127.0.0.1:{free_port()}")
    monkeypatch.setenv("ALIGNMENT_ROOT", str(tmp_path / "root"))
    resources = build_resources(Settings.from_env())
    assert resources["mlflow"].tracking_uri == "ALIGNMENT_MLFLOW_URI"  # an EnvVar: the name, not the value
    with pytest.raises(RedactedError) as err:
        resources["mlflow"].experiment_id()
    assert "MLflow" in str(err.value) and "127.0.0.1" in str(err.value) and PASSWORD not in str(err.value)

    from alignment_dagster.assets.prompt_pool import prompt_pool

    home = tmp_path / "dagster_home"
    home.mkdir()
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        result = materialize([prompt_pool], instance=instance, resources=resources, raise_on_error=False)
        failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "RedactedError" in str(failure.step_failure_data.error)
    out, errors = capfd.readouterr()
    assert scan(PASSWORD, paths=[home, tmp_path / "root"], texts={"stdout": out, "stderr": errors}) == []


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real `mlflow server` on loopback (SQLite store); yields its base URL without credentials."""
    port = free_port()
    store = tmp_path / "mlflow-server"
    store.mkdir()
    log = open(store / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{store / 'mlflow.db'}",
            "--artifacts-destination",
            str(store / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited:\n{(store / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        else:
            pytest.fail(f"mlflow server not ready:\n{(store / 'server.log').read_text()[-3000:]}")
        yield url
    finally:
        stop_session(proc, grace_s=5)  # nothing to flush: the test has read what it needs
        log.close()


@pytest.fixture
def judge_server() -> Iterator:
    from tests.openai_server import OpenAICompatibleServer

    server = OpenAICompatibleServer(API_KEY).start()
    try:
        yield server
    finally:
        server.stop()


def _materialize(
    tmp_path: Path, env: dict[str, str], partition: str, judge: dict
) -> subprocess.CompletedProcess:
    """`dagster asset materialize` as a user runs it: the shared inputs, the constitution, the judge, routing
    and the (replayed) human labels its signal check needs."""
    config = {
        "ops": {
            "response_pairs": {"config": {"sample": False, "import_limit": N_PAIRS, "heldout_fraction": 1.0}}
        },
        # The test server shares this machine's cores with the run: it gets more than the 60 s default.
        "resources": {"judge_model": {"config": {**judge, "timeout_s": 600, "deadline_s": 600}}},
    }
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "asset",
            "materialize",
            "-m",
            "alignment_dagster.definitions",
            "--select",
            "prompt_pool,response_pairs,known_labels,constitution,ai_preferences,ai_principle_votes,edge_cases,human_labels",
            "--partition",
            partition,
            "--config-json",
            json.dumps(config),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.slow
def test_a_materialization_stores_no_secret(tmp_path: Path, mlflow_server: str, judge_server) -> None:
    constitutions = tmp_path / "constitutions"
    constitutions.mkdir()
    (constitutions / "secrets-check.yaml").write_text(SMALL_CONSTITUTION)
    partition = parse_constitution(SMALL_CONSTITUTION, "x").partition_key
    home, root = tmp_path / "dagster_home", tmp_path / "root"
    home.mkdir()
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        instance.add_dynamic_partitions("constitution", [partition])
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DAGSTER_HOME": str(home),
        "ALIGNMENT_ROOT": str(root),
        "ALIGNMENT_CONSTITUTIONS_DIR": str(constitutions),
        "ALIGNMENT_IMPORT_PAIRS": str(SHARED_DATA),
        "ALIGNMENT_MLFLOW_URI": mlflow_server.replace("http://", f"http://ann:{PASSWORD}@"),
        "ALIGNMENT_JUDGE_KIND": "openai",
        "ALIGNMENT_JUDGE_BASE_URL": judge_server.url,
        "ALIGNMENT_JUDGE_SERVED_MODEL": judge_server.served_model,
        "ALIGNMENT_JUDGE_API_KEY_ENV": "SECRETS_TEST_JUDGE_KEY",
        "SECRETS_TEST_JUDGE_KEY": API_KEY,
    }
    judge = {
        "kind": "openai",
        "base_url": judge_server.url,
        "served_model": judge_server.served_model,
        "api_key_env": "SECRETS_TEST_JUDGE_KEY",
    }
    done = _materialize(tmp_path, env, partition, judge)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # It really ran through both: the judge answered requests carrying the key, MLflow holds the runs.
    assert judge_server.authorized == N_PAIRS * 2 * 2 and judge_server.refused == 0  # principles x orders
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("alignment-dagster").experiment_id])
    judge_ids = {r.data.tags.get("judge.id") for r in runs} - {None}
    assert judge_ids == {f"openai:{judge_server.served_model}@{judge_server.url}"}
    places = [home, root, tmp_path / "mlflow-server"]
    texts = {"stdout": done.stdout, "stderr": done.stderr}
    # What is scanned exists: run storage and event log, compute logs, the MLflow server's store.
    assert list(home.rglob("runs.db")) and list(home.rglob("*.err"))
    assert list((tmp_path / "mlflow-server").rglob("mlflow.db"))
    assert scan([PASSWORD, API_KEY], paths=places, texts=texts) == []
