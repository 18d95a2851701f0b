"""Labelling backend resource: where edge cases go and human labels come from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pandas as pd
from dagster import ConfigurableResource
from pydantic import Field

from alignment_dagster.core.redaction import redact_url
from alignment_dagster.core.storage import Storage
from alignment_dagster.human.file_queue import FileQueue
from alignment_dagster.human.label_studio import DEFAULT_TOKEN_ENV, LabelStudioClient
from alignment_dagster.human.labels import HUMAN_LABEL_COLUMNS
from alignment_dagster.human.polling import file_queue_marker
from alignment_dagster.human.replay import ReplayLabeller


@dataclass
class Collected:
    labels: pd.DataFrame  # human_labels contract, everything this backend holds for the version
    pending: list[str]  # sent pairs still without a label
    info: dict = field(default_factory=dict)  # backend facts for metadata (never secrets)


class LabellingResource(ConfigurableResource):
    """`replay` answers from known dataset labels (demos, benchmarks); `file_queue` writes JSONL/CSV batches
    to storage and imports filled-in files; `label_studio` uses a Label Studio server (token from env)."""

    backend: Literal["replay", "file_queue", "label_studio"] = "replay"
    label_studio_url: str | None = Field(None, description="e.g. http://127.0.0.1:8080")
    token_env: str = Field(
        DEFAULT_TOKEN_ENV, description="Environment variable holding the Label Studio token."
    )

    def collect(
        self,
        constitution_key: str,
        principles: list[str],
        tasks: pd.DataFrame,
        known_labels: pd.DataFrame,
        storage: Storage,
    ) -> Collected:
        """Send the edge cases (joined with their pairs) and return the labels collected so far."""
        sent = tasks[tasks["send"].astype(bool)] if "send" in tasks.columns else tasks
        if self.backend == "replay":
            result = ReplayLabeller(known_labels).label(tasks)
            return Collected(
                result.labels, result.pending, {"backend": "replay (known dataset labels, not live humans)"}
            )
        if self.backend == "file_queue":
            queue = FileQueue(storage, f"queue/{constitution_key}")
            batch = queue.write_batch(tasks, principles) if len(sent) else None
            labels = queue.labels()
            have = set(labels["pair_id"])
            return Collected(
                labels,
                [p for p in sent["pair_id"] if p not in have],
                {
                    "backend": "file_queue",
                    "queue": storage.url(f"queue/{constitution_key}"),
                    "batch_id": getattr(batch, "batch_id", None),
                },
            )
        if not self.label_studio_url:
            raise ValueError("labelling backend label_studio needs label_studio_url")
        with LabelStudioClient(self.label_studio_url, self.token_env) as client:
            project = client.ensure_project(constitution_key, None, principles)
            added = client.import_tasks(project, tasks, constitution_key)
            labels = client.completed_annotations(project)
        have = set(labels["pair_id"])
        return Collected(
            labels.reindex(columns=HUMAN_LABEL_COLUMNS),
            [p for p in sent["pair_id"] if p not in have],
            {
                "backend": "label_studio",
                "url": redact_url(self.label_studio_url),
                "project": project,
                "tasks_added": added,
            },
        )

    def markers(self, constitution_keys: list[str], storage: Storage) -> dict[str, str | None]:
        """Per constitution version, a marker that changes when its completed annotations change (see
        `labelling.poll`); None where nothing was sent yet. The replay labeller answers at once inside
        `human_labels`, so there is nothing to poll: it returns {}."""
        if self.backend == "replay":
            return {}
        if self.backend == "file_queue":
            return {
                k: file_queue_marker(storage.list(f"queue/{k}/labels"))
                if storage.list(f"queue/{k}/batches")
                else None
                for k in constitution_keys
            }
        if not self.label_studio_url:
            raise ValueError("labelling backend label_studio needs label_studio_url")
        with LabelStudioClient(self.label_studio_url, self.token_env) as client:
            projects = client.constitution_projects()
            return {
                k: client.annotation_marker(projects[k]) if k in projects else None for k in constitution_keys
            }
