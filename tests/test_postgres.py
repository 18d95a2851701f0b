"""Concurrent runs against metadata on a real PostgreSQL (Debian's package, `tests/postgres_fixture.py`): the
Dagster instance (dagster-postgres) and the MLflow tracking store, set up by `alignment-dagster init-stores`.

Four constitution x blend partitions of `reward_model` run at the same moment, each its own process and
Dagster run (as a sensor's requests or a backfill run them): two train on identical rows (so their weights
meet in the content-addressed store), two are too small and write card-only folders. SQLite's single writer
is what such runs contend for; here every run, materialization, MLflow run and registered version lands in
PostgreSQL, and the role's password appears in neither database, the storage root nor any log."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, MultiPartitionKey
from dagster_shared.serdes import serialize_value
from mlflow.tracking import MlflowClient

from alignment_dagster.cli.stores import prepare_stores
from alignment_dagster.core.redaction import redact_url
from alignment_dagster.core.settings import Settings
from alignment_dagster.data.blending import blend_preferences
from alignment_dagster.data.pairs import import_pairs
from alignment_dagster.specs.blend import Blend
from tests.conftest import REPO, SHARED_DATA, write_known_labels
from tests.postgres_fixture import postgres  # noqa: F401

CONSTITUTIONS = ["alpha-0123abcd", "beta-89abcdef"]
TRAINED, SKIPPED = "hybrid", "human-only"  # blend keys of the starter blends (the blend library finds them)
CONFIG = {
    "ops": {
        "reward_model": {
            "config": {
                "max_steps": 2,
                "batch_size": 4,
                "max_length": 48,
                "heldout_limit": 0,
                "save_steps": 50,
            }
        }
    }
}

RUN = """
import json, sys, time
from pathlib import Path
from dagster import AssetKey, DagsterInstance, MultiPartitionKey, materialize
from alignment_dagster.core.settings import Settings
from alignment_dagster.definitions import build_definitions, build_resources
constitution, blend, barrier = sys.argv[1], sys.argv[2], Path(sys.argv[3])
settings = Settings.from_env()
defs, resources, instance = build_definitions(settings), build_resources(settings), DagsterInstance.get()
(barrier / f"ready-{constitution}-{blend}").touch()
while not (barrier / "go").exists():  # every process is loaded: start the runs together
    time.sleep(0.05)
result = materialize(
    list(defs.assets), selection=[AssetKey("reward_model")], instance=instance, resources=resources,
    partition_key=MultiPartitionKey({"constitution": constitution, "blend": blend}),
    run_config=json.loads(sys.argv[4]), raise_on_error=False,
)
print(json.dumps({"run_id": result.run_id, "success": result.success}))
"""


def hh_dataset(n: int) -> pd.DataFrame:
    ps = import_pairs([str(SHARED_DATA)], lambda u: Path(u).read_bytes(), limit=n)
    human = ps.labels.rename(columns={"label": "choice"})
    return blend_preferences(
        ps.pairs, None, human, Blend(name="human-only", ai_weight=0, eval_fraction=0.25)
    ).dataset


def seed_datasets(root: Path) -> None:
    """preference_dataset as its asset stores it, per partition: 24 real HH rows, or 2 (too few to train)."""
    rows = hh_dataset(24)
    write_known_labels(root)
    for constitution in CONSTITUTIONS:
        for blend, frame in ((TRAINED, rows), (SKIPPED, rows.head(2))):
            path = root / "preference_dataset" / constitution / blend / "data.parquet"
            path.parent.mkdir(parents=True)
            frame.to_parquet(path, index=False)


def run_at_once(tmp_path: Path, env: dict[str, str]) -> list[dict]:
    """One process per partition; released together once all are loaded; their JSON result lines."""
    (tmp_path / "run.py").write_text(RUN)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, str(tmp_path / "run.py"), c, b, str(barrier), json.dumps(CONFIG)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for c in CONSTITUTIONS
        for b in (TRAINED, SKIPPED)
    ]
    deadline = time.time() + 300
    while len(list(barrier.glob("ready-*"))) < len(procs):
        failed = [p for p in procs if p.poll() is not None]
        assert not failed and time.time() < deadline, failed and failed[0].communicate()[1][-3000:]
        time.sleep(0.1)
    (barrier / "go").touch()
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    return [json.loads(out.strip().splitlines()[-1]) | {"log": out + err} for out, err in outputs]


def files_holding(folder: Path, secret: bytes) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and secret in p.read_bytes()]


@pytest.mark.slow
def test_partitions_run_at_once_on_postgres(tmp_path: Path, postgres, monkeypatch) -> None:  # noqa: F811
    root, home = tmp_path / "root", tmp_path / "dagster_home"
    env = {
        **os.environ,
        "PGPASSWORD": postgres.password,
        "ALIGNMENT_DAGSTER_POSTGRES_URL": postgres.create_database("dagster"),
        "ALIGNMENT_MLFLOW_URI": postgres.create_database("mlflow"),
        "ALIGNMENT_ROOT": str(root),
        "DAGSTER_HOME": str(home),
        "OMP_NUM_THREADS": "1",
        "TMPDIR": str(tmp_path),  # the runs' scratch folders, scanned below
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    for var in ("PGPASSWORD", "ALIGNMENT_DAGSTER_POSTGRES_URL"):
        monkeypatch.setenv(var, env[var])
    settings = Settings.from_env(env)
    stores = prepare_stores(home, settings)
    assert stores == {
        "dagster": f"postgres {redact_url(env['ALIGNMENT_DAGSTER_POSTGRES_URL'])}",
        "mlflow": redact_url(env["ALIGNMENT_MLFLOW_URI"]),
    }
    assert stores["mlflow"].startswith("postgresql://") and "/mlflow" in stores["mlflow"]
    instance = DagsterInstance.from_config(str(home))
    instance.add_dynamic_partitions("constitution", CONSTITUTIONS)
    instance.add_dynamic_partitions("blend", [TRAINED, SKIPPED])
    seed_datasets(root)

    results = run_at_once(tmp_path, env)
    assert all(r["success"] for r in results), [r["log"][-4000:] for r in results if not r["success"]]

    # Dagster: four successful runs in PostgreSQL, all in flight at one moment; nothing in SQLite.
    records = instance.get_run_records()
    assert {r.dagster_run.run_id for r in records} == {r["run_id"] for r in results}
    assert {r.dagster_run.status for r in records} == {DagsterRunStatus.SUCCESS}
    assert max(r.start_time for r in records) < min(r.end_time for r in records)
    expected = {
        str(MultiPartitionKey({"constitution": c, "blend": b}))
        for c in CONSTITUTIONS
        for b in (TRAINED, SKIPPED)
    }
    assert instance.get_materialized_partitions(AssetKey("reward_model")) == expected
    assert postgres.admin("psql", "-tA", "-d", "dagster", "-c", "SELECT count(*) FROM runs").strip() == "4"
    assert not [p for folder in (home, root) for p in folder.rglob("*.db")]

    # MLflow: one experiment, a finished parent and child per run, a version per trained partition.
    client = MlflowClient(settings.mlflow_uri, registry_uri=settings.mlflow_uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "alignment-dagster"]
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    assert len(runs) == 8 and {r.info.status for r in runs} == {"FINISHED"}
    children = [r for r in runs if r.data.tags["alignment.level"] == "asset"]
    assert {
        (r.data.tags["dagster.partition.constitution"], r.data.tags["dagster.partition.blend"])
        for r in children
    } == {(c, b) for c in CONSTITUTIONS for b in (TRAINED, SKIPPED)}
    assert sorted(m.name for m in client.search_registered_models()) == [
        f"reward-{c}-{TRAINED}" for c in CONSTITUTIONS
    ]
    assert all(client.get_model_version(f"reward-{c}-{TRAINED}", "1") for c in CONSTITUTIONS)

    # Storage: weights written by two runs at once are one file per distinct content.
    weights = [root / "reward_model" / c / TRAINED / "model" / "model.safetensors" for c in CONSTITUTIONS]
    digests = {
        json.loads((w.parent / "_MANIFEST.json").read_text())["sha256"]["model.safetensors"] for w in weights
    }
    assert len({w.stat().st_ino for w in weights}) == len(digests)
    for c in CONSTITUTIONS:
        card = json.loads((root / "reward_model" / c / SKIPPED / "model" / "alignment.json").read_text())
        assert card["trained"] is False

    # The password: in neither database, no file (storage root, instance, the runs' scratch), no run's output.
    secret = postgres.password.encode()
    for db in ("dagster", "mlflow"):
        dump = postgres.admin("pg_dump", "--data-only", db)
        assert results[0]["run_id"] in dump and postgres.password not in dump
    # Dagster compresses job snapshots (which carry every resource's settings): read them decoded.
    for record in records:
        snapshot = serialize_value(instance.get_job_snapshot(record.dagster_run.job_snapshot_id))
        # A URL with a user in it reaches the resource as the variable that holds it, never as its value.
        assert "ALIGNMENT_MLFLOW_URI" in snapshot and settings.mlflow_uri not in snapshot
        assert postgres.password not in snapshot
    assert files_holding(tmp_path, secret) == []
    assert not [r for r in results if postgres.password in r["log"]]


def test_advisory_lock_holds_off_other_sessions(postgres, monkeypatch) -> None:  # noqa: F811
    """The lock MLflowTracking takes around first-use sections of a PostgreSQL store, on the real server:
    re-entrant for its holder, exclusive against another session until the outermost release."""
    import threading

    from alignment_dagster.core.db_lock import AdvisoryLock, store_lock

    monkeypatch.setenv("PGPASSWORD", postgres.password)
    url = postgres.create_database("locks")
    holder, other = store_lock(url, "mlflow-tracking:x"), store_lock(url, "mlflow-tracking:x")
    assert isinstance(holder, AdvisoryLock)
    acquired = threading.Event()

    def wait_for_lock() -> None:
        with other:
            acquired.set()

    with holder:
        with holder:  # nested: the same session takes it again
            waiter = threading.Thread(target=wait_for_lock)
            waiter.start()
        assert not acquired.wait(1.0)  # still held by the outer section
    assert acquired.wait(30)
    waiter.join(30)
    with store_lock(url, "mlflow-tracking:y"):  # another name is another lock
        with holder:
            pass
