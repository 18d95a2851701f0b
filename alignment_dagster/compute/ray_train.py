"""Ray job: reward-model or DPO training on Ray Train, a TorchTrainer around the project's own TRL trainers.

    python -m alignment_dagster.compute.ray_train   (submitted by `compute.cluster_training`, Pipes extras)

Each Ray Train worker reads the training rows (Parquet) from the run's storage and calls the same function
the local path calls (`train_reward_model`, `train_dpo`); Ray Train has set up the process group (gloo on
CPU, NCCL on GPUs) and the variables the Hugging Face Trainer reads, so the Trainer runs DDP by itself.
Every worker first restores the newest checkpoint in storage, and rank 0 publishes each checkpoint it saves,
so a killed job resumes there; rank 0 then stores the final weights (safetensors, content-addressed) and the
training log. DeepSpeed or FSDP on GPUs are the trainers' own settings (`docs/scale-out.md`).
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from pathlib import Path

import pandas as pd

from alignment_dagster.compute.job_io import open_job_storage
from alignment_dagster.training.checkpoints import StorageCheckpoints
from alignment_dagster.training.stages import step_counter


def train_worker(job: dict) -> None:
    """One Ray Train worker: restore, train with the project's trainer, rank 0 stores the result."""
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    storage = open_job_storage(job)
    rows = pd.read_parquet(io.BytesIO(storage.read_bytes(job["rows_key"])))
    work = Path(tempfile.mkdtemp(prefix=f"alignment-train-{rank}-"))
    checkpoints = StorageCheckpoints(storage, job["checkpoint_prefix"])
    counter = step_counter()
    callbacks = [checkpoints.callback(), counter]
    if job["kind"] == "reward":
        from alignment_dagster.training.reward import RewardTrainingConfig, train_reward_model

        final = work / "model"
        resumed = checkpoints.restore_latest(final / "checkpoints")
        result = train_reward_model(rows, RewardTrainingConfig(**job["config"]), final, callbacks=callbacks)
    else:
        from alignment_dagster.training.dpo import DPOTrainingConfig, train_dpo

        resumed = checkpoints.restore_latest(work / "checkpoints")
        config = DPOTrainingConfig(**job["config"])
        result = train_dpo(rows, job["base_path"], config, work, callbacks=callbacks)
        final = result.output_dir
    if rank == 0:
        storage.put_dir(job["output_key"], final, content_addressed=True)
        log = {
            "log_history": result.log_history,
            "train_metrics": result.train_metrics,
            "steps": counter.steps,
            "resumed_from_step": resumed,
            "world_size": ray.train.get_context().get_world_size(),
        }
        storage.write_bytes(job["result_key"], json.dumps(log, default=str).encode())


def train_on_ray(job: dict) -> dict:
    """Run `train_worker` on `job['workers']` Ray Train workers; what to report."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    t0 = time.perf_counter()
    gpus = float(job.get("gpus_per_worker") or 0)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=job,
        torch_config=TorchConfig(backend="nccl" if gpus else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=int(job["workers"]),
            use_gpu=gpus > 0,
            resources_per_worker={"CPU": float(job["cpus_per_worker"]), **({"GPU": gpus} if gpus else {})},
        ),
        # Ray Train's own run folder holds only its bookkeeping: checkpoints live in the pipeline's storage.
        run_config=RunConfig(storage_path=tempfile.mkdtemp(prefix="alignment-ray-train-")),
    )
    trainer.fit()
    log = json.loads(open_job_storage(job).read_bytes(job["result_key"]))
    return {
        "kind": job["kind"],
        "workers": int(job["workers"]),
        "world_size": int(log["world_size"]),
        "steps": int(log["steps"]),
        "resumed_from_step": -1 if log["resumed_from_step"] is None else int(log["resumed_from_step"]),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def main() -> None:
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        pipes.report_custom_message(train_on_ray(dict(pipes.extras)))


if __name__ == "__main__":
    main()
