"""Where heavy stages run (`compute`): `local`, in the Dagster run's process (the default), or `ray`, as Ray
jobs on the cluster at `address`, submitted through dagster-ray's `PipesRayJobClient`.

Code reaches the cluster as the installed package in the cluster's Python environment (its image, or here
the same venv), not as a `working_dir`: a working_dir is zipped and uploaded with every job, holds whatever
sits in the checkout (model folders, `.alignment/`), and would run code the image's dependencies were never
installed for. The job gets only environment variable *names* and non-secret settings: Ray keeps every job's
entrypoint and runtime environment in its job table, readable by anyone who can reach the dashboard.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, Literal

from dagster import ConfigurableResource
from pydantic import Field

from alignment_dagster.backends import Backend, make_backend
from alignment_dagster.compute.job_io import Submit, storage_extras
from alignment_dagster.core.storage import Storage
from alignment_dagster.evaluation.policy_vs_base import EvalBackends

# Variables a job's processes need to find what the stage's process finds (paths, never secrets).
PASSED_ENV = ("ALIGNMENT_MODEL_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


class ComputeResource(ConfigurableResource):
    """`local` runs the heavy stages here; `ray` submits them to the Ray cluster at `address`."""

    kind: Literal["local", "ray"] = "local"
    address: str | None = Field(
        None, description="ray: the cluster's dashboard (job submission) address, e.g. http://127.0.0.1:8265."
    )
    workers: int = Field(2, ge=1, description="ray: workers (Ray Data actors, Ray Train workers) per stage.")
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(
        0.0, ge=0, description="ray: GPUs each worker asks for (0 on CPU clusters)."
    )
    python: str | None = Field(
        None,
        description="ray: the cluster's Python running the job's entrypoint; default this process's "
        "interpreter (a cluster on this machine or an image built like it).",
    )
    stage_workers: dict[str, int] = Field(
        default_factory=dict,
        description="ray: workers for some stages instead of `workers`, by asset name, e.g. "
        '{"ai_preferences": 8, "dpo_policy": 4}.',
    )
    stage_gpus_per_worker: dict[str, float] = Field(
        default_factory=dict, description='ray: GPUs per worker by asset name, e.g. {"dpo_policy": 1}.'
    )

    def is_ray(self) -> bool:
        return self.kind == "ray"

    def job_settings(self, context, storage: Storage, s3) -> dict:
        """What a stage's job needs besides its plan: the storage and the stage's own worker shape."""
        stage = context.op_def.name
        return {
            **storage_extras(storage, s3.endpoint_url, s3.region_name),
            "workers": self.stage_workers.get(stage, self.workers),
            "cpus_per_worker": self.cpus_per_worker,
            "gpus_per_worker": self.stage_gpus_per_worker.get(stage, self.gpus_per_worker),
        }

    def submitter(self, context) -> Submit:
        """`submit(module, extras)` for this run: the module as a Ray job, its report back through Pipes."""
        if not self.is_ray():
            raise ValueError("compute is local: nothing is submitted")
        if not self.address:
            raise ValueError(
                "compute `ray` needs `address` (ALIGNMENT_RAY_ADDRESS), e.g. http://127.0.0.1:8265"
            )
        from dagster_ray import PipesRayJobClient

        client = PipesRayJobClient(address=self.address, poll_interval=0.5)
        python = self.python or sys.executable
        env = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}

        def submit(module: str, extras: dict[str, Any]) -> dict[str, Any]:
            invocation = client.run(
                context=context,
                submit_job_params={
                    "entrypoint": f"{python} -m {module}",
                    "runtime_env": {"env_vars": dict(env)},
                    "entrypoint_num_cpus": 0,  # the driver only coordinates; the workers get the cores
                },
                extras=extras,
            )
            reports = invocation.get_custom_messages()
            if not reports:
                raise RuntimeError(f"Ray job for {module} reported nothing through Pipes")
            return {**reports[-1], "ray_job_id": invocation.metadata["Ray Job ID"].value}

        return submit

    def backends(self, context, local: Callable[[], Backend], spec, storage: Storage, s3) -> StageBackends:
        """A stage's backend factory: the local one, or one whose model calls run as jobs on Ray."""
        return StageBackends(self, context, storage, s3, spec, local)

    def trainer(self, context, kind: str, storage: Storage, s3, checkpoints):
        """None (train here), or a `ClusterTrainer` that trains `kind` ('reward', 'dpo') on Ray Train."""
        if not self.is_ray():
            return None
        from alignment_dagster.compute.cluster_training import ClusterTrainer

        job = self.job_settings(context, storage, s3)
        return ClusterTrainer(kind, self.submitter(context), storage, job, checkpoints)


class StageBackends:
    """Makes a stage's backends when they are first needed (local ones, or `ClusterBackend`s with compute
    `ray`), and sums up the cluster jobs they ran."""

    def __init__(
        self, compute: ComputeResource, context, storage: Storage, s3, spec, local: Callable[[], Backend]
    ):
        self.compute, self.context, self.storage, self.s3 = compute, context, storage, s3
        self.spec, self.local = spec, local
        self.made: list[Backend] = []

    def __call__(self) -> Backend:
        return self.make(self.spec, self.local)

    def make(self, spec, local: Callable[[], Backend]) -> Backend:
        """The backend `spec` names: `local()`, or one whose model calls run on Ray."""
        if not self.compute.is_ray():
            backend = local()
        else:
            from alignment_dagster.compute.cluster_backend import ClusterBackend

            job = self.compute.job_settings(self.context, self.storage, self.s3)
            backend = ClusterBackend(spec, self.compute.submitter(self.context), self.storage, job)
        self.made.append(backend)
        return backend

    def for_evals(self, judge_model, reference: Callable = lambda: None) -> Callable[[], EvalBackends]:
        """What evals needs (base, the trained policy on top of it, the judge), made only once the policy
        is known to be trained, and the reference judge only where one is configured (it stays local)."""

        def backends() -> EvalBackends:
            def policy(folder) -> Backend:
                spec = self.spec.model_copy(update={"adapter": str(folder)})
                return self.make(spec, lambda: make_backend(spec))

            judge = self.make(judge_model.spec(), judge_model.backend)
            return EvalBackends(self(), policy, judge, self.spec.on_cuda(), reference())

        return backends

    def job_summary(self) -> dict[str, Any]:
        """Metadata of the Ray jobs (as their Pipes reports said); `compute: local` without any."""
        reports = [r for b in self.made for r in getattr(b, "reports", [])]
        if not reports:
            return {"compute": "ray" if any(hasattr(b, "reports") for b in self.made) else "local"}
        return {
            "compute": "ray",
            "ray_job_ids": ",".join(r["ray_job_id"] for r in reports),
            "ray_shards": sum(int(r["shards"]) for r in reports),
            "ray_model_calls": sum(int(r["model_calls"]) for r in reports),
            "ray_worker_processes": max(int(r["worker_processes"]) for r in reports),
            "ray_workers": int(reports[-1]["workers"]),
            "ray_seconds": round(sum(float(r["seconds"]) for r in reports), 1),
        }
