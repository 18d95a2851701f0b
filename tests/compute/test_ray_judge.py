"""Judging as a Ray job through dagster-ray's Pipes client, on a real local cluster and a real Dagster
instance: a killed job resumes from its stored shards, a killed worker costs at most the shard it held, the
result equals in-process judging with the same shard boundaries, and no secret reaches Ray's job table or
logs."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
from dagster import DagsterInstance, materialize

from alignment_dagster.assets.ai_preferences import ai_preferences
from alignment_dagster.assets.prompt_pool import prompt_pool
from alignment_dagster.assets.response_pairs import response_pairs
from alignment_dagster.assets.versions import constitution
from alignment_dagster.backends import BackendSpec, make_backend
from alignment_dagster.core.settings import Settings
from alignment_dagster.core.storage import LocalStorage
from alignment_dagster.core.values import read_value, value_prefix
from alignment_dagster.definitions import build_resources
from alignment_dagster.judge.constitutional import judge_constitution
from alignment_dagster.specs.constitution import parse_constitution
from tests.conftest import SHARED_DATA, report
from tests.secrets_scan import scan
from tests.test_secrets import SMALL_CONSTITUTION as CONSTITUTION  # two principles

N_PAIRS = 24
SHARD = 8  # judge prompts per shard: 2 pairs of 2 principles x 2 orders, so 12 shards
CANARY = "awsSecretCanary9Vq4Tz"


def _judgment_keys(root: Path) -> list[str]:
    """Every key of every judgment shard under `root`'s cache, duplicates kept."""
    keys: list[str] = []
    for f in sorted((root / "cache" / "judgments").rglob("shard-*.parquet")):
        keys += list(pd.read_parquet(f)["key"])
    return keys


def _shard_files(root: Path) -> dict[str, pd.DataFrame]:
    return {f.name: pd.read_parquet(f) for f in (root / "cache" / "judgments").rglob("shard-*.parquet")}


def _ray_workers() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if "ShardWorker" in " ".join(p.info["cmdline"] or []):
            found.append(p)
    return found


def _when(condition, then, stop: threading.Event, timeout_s: float = 600) -> threading.Thread:
    """Run `then()` once `condition()` holds (polled), in the background."""

    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while not stop.is_set() and time.monotonic() < deadline:
            if condition():
                then()
                return
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_judging_on_ray_resumes_survives_a_killed_worker_and_matches_in_process(
    tmp_path: Path, ray_cluster, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CANARY)  # in the submitting process: must not travel
    folder = tmp_path / "constitutions"
    folder.mkdir()
    (folder / "two-principles.yaml").write_text(CONSTITUTION)
    spec = parse_constitution(CONSTITUTION, "x")
    root = tmp_path / "root"
    settings = Settings.from_env(
        {
            "ALIGNMENT_ROOT": str(root),
            "ALIGNMENT_CONSTITUTIONS_DIR": str(folder),
            "ALIGNMENT_IMPORT_PAIRS": str(SHARED_DATA),
            "ALIGNMENT_COMPUTE": "ray",
            "ALIGNMENT_RAY_ADDRESS": ray_cluster.address,
            "ALIGNMENT_RAY_WORKERS": "2",
        }
    )
    resources = build_resources(settings)
    config = {
        "ops": {
            "response_pairs": {"config": {"sample": False, "import_limit": N_PAIRS, "heldout_fraction": 1.0}},
            "ai_preferences": {"config": {"shard_size": SHARD}},
        }
    }
    assets = [prompt_pool, response_pairs, constitution, ai_preferences]
    client = JobSubmissionClient(ray_cluster.address)
    total = N_PAIRS * 2 * 2
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("constitution", [spec.partition_key])

        def run():
            return materialize(
                assets,
                resources=resources,
                instance=instance,
                partition_key=spec.partition_key,
                run_config=config,
                raise_on_error=False,
            )

        # 1. The Ray job is stopped once 3 shards are stored: the run fails, the shards stay.
        def stop_job() -> None:
            for job in client.list_jobs():
                if job.status == JobStatus.RUNNING:
                    client.stop_job(job.submission_id)

        stop = threading.Event()
        _when(lambda: len(_judgment_keys(root)) >= 3 * SHARD, stop_job, stop)
        first = run()
        stop.set()
        assert not first.success
        stored = len(set(_judgment_keys(root)))
        assert 3 * SHARD <= stored < total

        # 2. Rematerialized: only the missing judgments are computed; one worker is killed mid-way.
        killed: list[int] = []

        def kill_worker() -> None:
            worker = _ray_workers()[0]
            killed.append(worker.pid)
            worker.kill()

        stop = threading.Event()
        _when(
            lambda: len(_ray_workers()) == 2 and len(_judgment_keys(root)) >= stored + SHARD,
            kill_worker,
            stop,
        )
        t0 = time.perf_counter()
        second = run()
        stop.set()
        seconds = time.perf_counter() - t0
        assert second.success
        meta = {
            k: v.value
            for k, v in second.asset_materializations_for_node("ai_preferences")[0].metadata.items()
        }
    assert killed, "no worker was killed"
    assert meta["compute"] == "ray" and meta["ray_workers"] == 2
    job_id = meta["ray_job_ids"]
    assert job_id.startswith("pipes-") and "," not in job_id
    info = client.get_job_info(job_id)
    assert info.status == JobStatus.SUCCEEDED
    assert info.entrypoint.endswith("-m alignment_dagster.compute.ray_batch")
    # Every judgment stored exactly once; the killed worker's shard at most computed twice.
    keys = _judgment_keys(root)
    assert len(keys) == len(set(keys)) == total
    missing = total - stored
    assert missing <= meta["ray_model_calls"] <= missing + SHARD
    assert meta["model_calls"] == meta["ray_model_calls"]  # the stage counts what the job's workers ran

    # 3. The same pairs judged in-process with the same shard boundaries: same cache, same p_a.
    store = LocalStorage(root)
    pairs = read_value(store, value_prefix(["response_pairs"], []))
    on_ray = read_value(store, value_prefix(["ai_principle_votes"], [spec.partition_key]))
    local_root = tmp_path / "local"
    judged = judge_constitution(
        spec, pairs, lambda: make_backend(BackendSpec()), LocalStorage(local_root), None, shard_size=SHARD
    )
    both = on_ray.merge(judged.result.principles, on=["pair_id", "principle_id"], suffixes=("_ray", "_local"))
    assert len(both) == len(on_ray) == N_PAIRS * 2
    largest = float((both["p_a_ray"] - both["p_a_local"]).abs().max())
    assert largest < 1e-4
    ray_shards, local_shards = _shard_files(root), _shard_files(local_root)
    assert set(ray_shards) == set(local_shards)  # the same shards, named by their keys
    values = {
        name: dict(zip(df["key"], map(json.loads, df["value"]), strict=True))
        for name, df in ray_shards.items()
    }
    for name, df in local_shards.items():
        for key, value in zip(df["key"], map(json.loads, df["value"]), strict=True):
            assert abs(values[name][key] - value) < 1e-4
    report(
        request,
        f"ray judge: {N_PAIRS} pairs, {total} prompts; stopped job kept {stored}; resumed job: "
        f"{meta['ray_model_calls']} model calls for {missing} missing (worker {killed[0]} killed), "
        f"{seconds:.0f}s; largest |p_a ray - local| {largest:.2e}",
    )

    # 4. Neither the canary secret of the submitting process nor the cluster's token is in Ray's job table
    # or its session logs.
    table = json.dumps([vars(j) for j in client.list_jobs()], default=str)
    assert "alignment_dagster.compute.ray_batch" in table and "DAGSTER_PIPES_CONTEXT" in table
    token = Path(ray_cluster.env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    assert list(ray_cluster.temp_dir.rglob("*.log"))
    assert scan([CANARY, token], paths=[ray_cluster.temp_dir], texts={"ray job table": table}) == []
