"""reward_model trained on Ray Train (2 workers, DDP over gloo) through dagster-ray's Pipes client, on a real
local cluster: a stopped job resumes from its checkpoint in storage, and the model loads and scores like the
one trained in the run's own process on the same rows."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, MultiPartitionKey, materialize

from alignment_dagster.core.settings import Settings
from alignment_dagster.definitions import build_definitions, build_resources
from alignment_dagster.training.artifacts import load_reward_scorer, read_model_card
from alignment_dagster.training.stages import split_rows
from tests.assets.test_training import CONSTITUTION, add_partitions, hh_dataset
from tests.compute.test_ray_judge import _when
from tests.conftest import SHARED_DATA, report, write_known_labels

STEPS = 8
CONFIG = {
    "ops": {
        "reward_model": {
            "config": {"max_steps": STEPS, "save_steps": 2, "max_length": 96, "heldout_limit": 0}
        },
        "dpo_policy": {"config": {"max_steps": 2, "max_length": 128, "eval_limit": 2}},
    }
}


def _settings(root: Path, **env: str) -> Settings:
    return Settings.from_env({"ALIGNMENT_ROOT": str(root), "ALIGNMENT_IMPORT_PAIRS": str(SHARED_DATA), **env})


def _prepare(root: Path, dataset) -> None:
    path = root / "preference_dataset" / CONSTITUTION / "hybrid" / "data.parquet"
    path.parent.mkdir(parents=True)
    dataset.to_parquet(path, index=False)
    write_known_labels(root)


def _checkpoint_steps(root: Path) -> list[int]:
    folder = root / "checkpoints" / "reward_model" / CONSTITUTION
    steps = []
    for manifest in folder.rglob("checkpoint-*/_MANIFEST.json") if folder.exists() else []:
        steps.append(int(manifest.parent.name.split("-")[1]))
    return steps


def _materialize(
    settings: Settings, instance: DagsterInstance, raise_on_error: bool = True, assets=("reward_model",)
):
    resources = build_resources(settings)
    if settings.compute.get("kind") == "ray":
        resources["compute"] = resources["compute"].model_copy(update={"stage_workers": {"reward_model": 2}})
    return materialize(
        list(build_definitions(settings).assets),
        selection=[AssetKey(a) for a in assets],
        partition_key=MultiPartitionKey({"constitution": CONSTITUTION, "blend": "hybrid"}),
        instance=instance,
        resources=resources,
        run_config={"ops": {a: CONFIG["ops"][a] for a in assets}},
        raise_on_error=raise_on_error,
    )


def _metadata(result, asset: str = "reward_model") -> dict:
    return {k: v.value for k, v in result.asset_materializations_for_node(asset)[0].metadata.items()}


@pytest.mark.slow
def test_reward_model_on_ray_train_resumes_and_scores_like_in_process(
    tmp_path: Path, ray_cluster, request: pytest.FixtureRequest
) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    dataset = hh_dataset(48)
    ray_root, local_root = tmp_path / "ray", tmp_path / "local"
    for root in (ray_root, local_root):
        _prepare(root, dataset)
    on_ray = _settings(
        ray_root,
        ALIGNMENT_COMPUTE="ray",
        ALIGNMENT_RAY_ADDRESS=ray_cluster.address,
        ALIGNMENT_RAY_WORKERS="1",  # the default; reward_model gets 2 of its own (`stage_workers`)
    )
    client = JobSubmissionClient(ray_cluster.address)
    with DagsterInstance.ephemeral() as instance:
        add_partitions(instance, "hybrid")

        # 1. The training job is stopped once a checkpoint is in storage: the run fails, the checkpoint stays.
        def stop_job() -> None:
            for job in client.list_jobs():
                if job.status == JobStatus.RUNNING and "ray_train" in job.entrypoint:
                    client.stop_job(job.submission_id)

        stop = threading.Event()
        _when(lambda: bool(_checkpoint_steps(ray_root)), stop_job, stop)
        first = _materialize(on_ray, instance, raise_on_error=False)
        stop.set()
        assert not first.success
        saved = max(_checkpoint_steps(ray_root))
        assert 2 <= saved < STEPS

        # 2. Rematerialized: the job resumes from that checkpoint and takes only the remaining steps; the
        # DPO policy trains on Ray beside it (1 worker: the default).
        t0 = time.perf_counter()
        second = _materialize(on_ray, instance, assets=("reward_model", "dpo_policy"))
        ray_seconds = time.perf_counter() - t0
        meta, dpo = _metadata(second), _metadata(second, "dpo_policy")
    assert meta["compute"] == "ray" and meta["ray_world_size"] == 2
    assert meta["ray_resumed_from_step"] >= saved and meta["resumed_from_step"] >= saved
    assert meta["ray_steps"] == STEPS - meta["ray_resumed_from_step"]
    assert client.get_job_info(meta["ray_job_id"]).status == JobStatus.SUCCEEDED
    assert dpo["compute"] == "ray" and dpo["ray_world_size"] == 1 and dpo["ray_steps"] == 2
    policy = ray_root / "dpo_policy" / CONSTITUTION / "hybrid" / "model"
    assert read_model_card(policy)["trained"] and (policy / "adapter_model.safetensors").is_file()

    # 3. The same rows trained in-process: both folders load and score the same eval rows.
    with DagsterInstance.ephemeral() as instance:
        add_partitions(instance, "hybrid")
        t0 = time.perf_counter()
        local = _materialize(_settings(local_root), instance)
        local_seconds = time.perf_counter() - t0
    _, evals = split_rows(dataset)
    accuracies, steps_per_epoch = {}, {}
    for name, root in (("ray", ray_root), ("local", local_root)):
        model_dir = root / "reward_model" / CONSTITUTION / "hybrid" / "model"
        card = read_model_card(model_dir)
        assert card["trained"] and card["n_train"] == (dataset["split"] == "train").sum()
        accuracy, chosen, rejected = load_reward_scorer(model_dir).accuracy(evals)
        assert len(chosen) == len(rejected) == len(evals)
        assert accuracy == pytest.approx(card["metrics"]["eval.accuracy"])
        accuracies[name] = accuracy
        # Data parallel for real: on Ray each worker's epoch is half the rows, in batches of 8.
        log = json.loads((model_dir / "training_log.json").read_text())["log_history"]
        last = [e for e in log if "epoch" in e and "step" in e][-1]
        steps_per_epoch[name] = round(last["step"] / last["epoch"])
    n = int(read_model_card(model_dir)["n_train"])
    assert steps_per_epoch == {"ray": math.ceil(math.ceil(n / 2) / 8), "local": math.ceil(n / 8)}
    assert "compute" not in _metadata(local)
    assert _checkpoint_steps(ray_root) == []  # the final model is stored: its checkpoints are gone
    report(
        request,
        f"ray train: reward model, {STEPS} steps, stopped after checkpoint {saved}, resumed from "
        f"{meta['ray_resumed_from_step']} on 2 workers ({ray_seconds:.0f}s); eval accuracy on Ray "
        f"{accuracies['ray']:.3f} vs in-process {accuracies['local']:.3f} (n={len(evals)}; "
        f"{local_seconds:.0f}s)",
    )
