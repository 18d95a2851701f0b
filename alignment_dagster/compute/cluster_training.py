"""Training as the stage sees it when it runs on a cluster: rows to storage, one Ray Train job
(`compute.ray_train`), the trained folder back from storage, with the log the local trainer would return."""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from alignment_dagster.compute.job_io import Submit
from alignment_dagster.core.storage import Storage
from alignment_dagster.training.checkpoints import StorageCheckpoints

JOB_MODULE = "alignment_dagster.compute.ray_train"


@dataclass
class ClusterTraining:
    """What `train_or_reuse` reads from a training result, plus the job's report."""

    log_history: list[dict[str, Any]]
    train_metrics: dict[str, float]
    steps: int
    resumed_from_step: int | None
    report: dict[str, Any] = field(default_factory=dict)


class ClusterTrainer:
    """`trainer(rows, config, final_dir, base_path=None)`: train `kind` ('reward' or 'dpo') on Ray Train,
    checkpointing under `checkpoints`' prefix, and put the weights in `final_dir`."""

    def __init__(
        self, kind: str, submit: Submit, storage: Storage, job: dict, checkpoints: StorageCheckpoints
    ):
        self.kind, self.submit, self.storage, self.job = kind, submit, storage, job
        self.checkpoints = checkpoints

    def __call__(
        self, rows: pd.DataFrame, config, final_dir: Path, base_path: str | None = None
    ) -> ClusterTraining:
        # Inside the checkpoints' folder: the same fingerprint (rows, config, base) names both, and a killed
        # run's leftovers go when that folder does.
        prefix = f"{self.checkpoints.prefix}/job"
        buf = io.BytesIO()
        rows.to_parquet(buf, index=False)
        self.storage.write_bytes(f"{prefix}/rows.parquet", buf.getvalue())
        extras = {
            **self.job,
            "kind": self.kind,
            "config": asdict(config),
            "base_path": base_path,
            "rows_key": f"{prefix}/rows.parquet",
            "checkpoint_prefix": self.checkpoints.prefix,
            "output_key": f"{prefix}/model",
            "result_key": f"{prefix}/result.json",
        }
        report = self.submit(JOB_MODULE, extras)
        self.storage.get_dir(f"{prefix}/model", final_dir)
        log = json.loads(self.storage.read_bytes(f"{prefix}/result.json"))
        self.storage.delete_prefix(prefix)
        return ClusterTraining(
            log["log_history"], log["train_metrics"], int(log["steps"]), log["resumed_from_step"], report
        )
