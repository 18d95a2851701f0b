"""`make demo` as a fresh user runs it (quick profile), then what happens after it on the same instance: a
real daemon starts nothing twice, and blend edits flow through the automation without judging or training.

One demo serves every check (it is the suite's longest run: two rounds of the whole pipeline)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, MultiPartitionKey
from dagster._core.instance.ref import InstanceRef
from mlflow.tracking import MlflowClient

from alignment_dagster.cli.drive import Driver
from alignment_dagster.core.settings import Settings
from alignment_dagster.definitions import build_definitions
from alignment_dagster.evaluation.side_by_side import comparison_table, latest_eval_runs
from alignment_dagster.specs.constitution import load_constitution
from tests.conftest import REPO

BLENDS = ["ai-only", "hh-baseline", "human-only", "hybrid"]
DAEMON_WATCH = 45  # seconds a daemon on the demo's instance runs (3 ticks of every sensor) to start nothing


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, dict]]:
    """The demo's root, its output, and the environment `make dev` would give the daemon."""
    root = tmp_path_factory.mktemp("demo") / "root"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALIGNMENT_", "DAGSTER_HOME"))}
    t0 = time.monotonic()
    out = subprocess.run(
        [str(Path(sys.executable).parent / "alignment-dagster"), "demo", "--quick", "--root", str(root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1500,
        env=env,
    )
    print(f"demo --quick: {time.monotonic() - t0:.0f}s")
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-6000:]
    dev_env = {
        **env,
        "DAGSTER_HOME": str(root / "dagster_home"),
        "ALIGNMENT_ROOT": str(root),
        "ALIGNMENT_CONSTITUTIONS_DIR": str(root / "constitutions"),
        "ALIGNMENT_PROFILE": "quick",
    }
    yield root, out.stdout, dev_env


def comparison(root: Path):
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    experiment = client.get_experiment_by_name("alignment-dagster").experiment_id
    return comparison_table(latest_eval_runs(client, experiment))


def latest(instance: DagsterInstance, asset: str, partition: str) -> dict:
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[partition]), limit=1
    ).records
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()} if records else {}


@pytest.mark.timeout(2400)
def test_demo_runs_two_rounds_to_the_comparison(demo) -> None:
    root, stdout, _ = demo
    files = sorted((root / "constitutions").glob("*.yaml"))
    assert [f.name for f in files] == ["constitutional-ai-round2.yaml", "constitutional-ai.yaml"]
    first, second = (load_constitution(root / "constitutions" / n) for n in [f.name for f in files][::-1])
    # Round 2 is judged by round 1's registered baseline reward model, pinned by version.
    assert second.judge.preference_model == f"models:/reward-{first.partition_key}-hh-baseline/1"
    assert not second.judge.use_llm_judge
    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(root / "dagster_home")))
    keys = [first.partition_key, second.partition_key]
    assert instance.get_dynamic_partitions("constitution") == keys
    assert sorted(instance.get_dynamic_partitions("blend")) == BLENDS
    for key in keys:
        assert (root / "ai_preferences" / key / "data.parquet").is_file()
        for blend in ("hh-baseline", "human-only"):  # not AI-sourced: never refused by the gate
            assert (root / "preference_dataset" / key / blend / "data.parquet").is_file()
    for round_ in ("round 1", "round 2"):
        assert f"[demo] {round_}: judging" in stdout and f"[demo] {round_}: preference_dataset" in stdout
    # Every AI-sourced partition either trained or printed the gate's measured verdict.
    for key in keys:
        for blend in ("ai-only", "hybrid"):
            partition = str(MultiPartitionKey({"constitution": key, "blend": blend}))
            assert latest(instance, "preference_dataset", partition) or (
                f"[demo] {partition}: blocked by a judge gate: " in stdout
            ), partition
    table = comparison(root)
    baseline = table[(table["blend"] == "hh-baseline") & (table["trained"] == "true")]
    assert sorted(baseline["constitution"]) == sorted(keys), table.to_string()
    assert baseline["win"].between(0, 1).all() and baseline["n"].gt(0).all()
    assert (baseline["win CI low"] <= baseline["win"]).all() and (
        baseline["win"] <= baseline["win CI high"]
    ).all()
    assert baseline["policy model"].str.startswith("models:/policy-").all()
    assert baseline["reward model"].str.startswith("models:/reward-").all()
    assert "[demo] comparison: policy vs base per constitution x blend" in stdout
    assert "[demo] reading the comparison:" in stdout
    assert f"storage:   {root}" in stdout and "alignment-dagster compare --root" in stdout
    rm = latest(
        instance, "reward_model", str(MultiPartitionKey({"constitution": keys[0], "blend": "hh-baseline"}))
    )
    assert rm["trained"] and 0.0 <= rm["metrics"]["hh_heldout.accuracy"] <= 1.0
    print(f"hh-baseline reward model, held-out HH accuracy: {rm['metrics']['hh_heldout.accuracy']:.3f}")


def test_a_daemon_after_the_demo_starts_nothing_twice(demo, tmp_path: Path) -> None:
    root, _, env = demo
    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(root / "dagster_home")))
    before = {r.run_id for r in instance.get_runs()}
    log = tmp_path / "daemon.log"
    with open(log, "wb") as handle:
        daemon = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(REPO / "workspace.yaml")],
            cwd=REPO,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 300
            sensors = ("constitution_sensor", "blend_sensor", "alignment_automation")
            while not all(s in log.read_text(errors="replace") for s in sensors):
                assert daemon.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(2)
            time.sleep(DAEMON_WATCH)  # more ticks of each: still nothing to launch
        finally:
            daemon.terminate()
            daemon.wait(timeout=60)
    new = [r for r in instance.get_runs() if r.run_id not in before]
    assert not new, [(r.job_name, r.tags.get("dagster/partition")) for r in new]


def judgment_files(root: Path) -> int:
    return sum(1 for p in (root / "cache" / "judgments").rglob("*") if p.is_file())


def test_blend_edits_refresh_datasets_and_keep_models_without_judging(
    demo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _, env = demo
    blends = tmp_path / "blends"
    shutil.copytree(REPO / "blends", blends)
    for name, value in {**env, "ALIGNMENT_BLENDS_DIR": str(blends)}.items():
        monkeypatch.setenv(name, value)
    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(root / "dagster_home")))
    driver = Driver(build_definitions(Settings.from_env()), instance, log=print)
    driver.tick_automation()  # the initial evaluation
    baseline = blends / "hh-baseline.yaml"
    spec = yaml.safe_load(baseline.read_text())
    judged = judgment_files(root)

    # 1. A new retrain policy only: the dataset reruns, its rows (and version) stay, nothing trains.
    baseline.write_text(yaml.safe_dump({**spec, "retrain": {"min_new_rows": 100000}}))
    edited = driver.tick_sensor("blend_sensor")
    assert [(job, key, ok) for job, key, ok in edited.runs] == [("blend_version", "hh-baseline", True)]
    settled = driver.settle()
    assert {assets for assets, _, _ in settled.runs} == {"preference_dataset"}, settled.runs
    assert all(ok for _, _, ok in settled.runs) and len(settled.runs) == 2  # one per constitution version

    # 2. A larger eval split, under the same policy: the training rows change (some move to eval), so the
    # models are asked, keep their weights (zero trainer steps, marked stale), and the comparison says so.
    # (Scaling every weight alike would not do: training normalises weights, so it trains the same model.)
    baseline.write_text(yaml.safe_dump({**spec, "eval_fraction": 0.4, "retrain": {"min_new_rows": 100000}}))
    driver.tick_sensor("blend_sensor")
    settled = driver.settle()
    assert all(ok for _, _, ok in settled.runs), settled.runs
    for key in instance.get_dynamic_partitions("constitution"):
        partition = str(MultiPartitionKey({"constitution": key, "blend": "hh-baseline"}))
        for asset in ("reward_model", "dpo_policy"):
            meta = latest(instance, asset, partition)
            assert meta["stale"] is True and meta["metrics"]["steps_this_run"] == 0, (asset, meta)
            assert "below the blend's retrain policy" in meta["retrain"]
    table = comparison(root)
    assert set(table.loc[table["blend"] == "hh-baseline", "stale"]) == {"true"}, table.to_string()
    assert judgment_files(root) == judged  # no judge call: every judgment came from the cache
    assert not any("ai_preferences" in assets for assets, _, _ in settled.runs)
