"""What a stage sends to a cluster job and how the job reads it back: Pipes extras (plain JSON, no secrets:
Ray keeps a job's entrypoint and runtime environment in its job table) and the run's storage."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alignment_dagster.core.storage import Storage, open_storage

# submit(module, extras) runs `python -m module` as a cluster job and returns what the job reported
# (its last Pipes custom message) plus `ray_job_id`.
Submit = Callable[[str, dict[str, Any]], dict[str, Any]]


def storage_extras(
    storage: Storage, s3_endpoint_url: str | None = None, s3_region: str | None = None
) -> dict:
    """How a job opens the run's storage: its URI and S3 endpoint; credentials come from the job's own
    environment (the cluster's image or secrets), never from here."""
    return {"storage_uri": storage.uri, "s3_endpoint_url": s3_endpoint_url, "s3_region": s3_region}


def open_job_storage(extras: dict[str, Any]) -> Storage:
    def client():
        import boto3

        return boto3.client(
            "s3", endpoint_url=extras.get("s3_endpoint_url"), region_name=extras.get("s3_region")
        )

    return open_storage(extras["storage_uri"], client)


def submit_without_pipes(address: str, folder: Path) -> Submit:
    """`submit` for scripts with no Dagster run (benchmarks, a plan run by hand): the job reads its extras
    from a file in `folder` (`--extras`, so the folder must be the cluster's too) and prints its report."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)

    def submit(module: str, extras: dict[str, Any]) -> dict[str, Any]:
        path = Path(folder) / f"extras-{time.time_ns()}.json"
        path.write_text(json.dumps(extras))
        entrypoint = f"{sys.executable} -m {module} --extras {path}"
        job = client.submit_job(entrypoint=entrypoint, entrypoint_num_cpus=0)
        while not (status := client.get_job_status(job)).is_terminal():
            time.sleep(0.2)
        logs = client.get_job_logs(job)
        if status != JobStatus.SUCCEEDED:
            raise RuntimeError(f"Ray job {job} ended {status}:\n{logs[-3000:]}")
        line = [x for x in logs.splitlines() if x.startswith("REPORT ")][-1]
        return {**json.loads(line.removeprefix("REPORT ")), "ray_job_id": job}

    return submit
