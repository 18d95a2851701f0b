"""Labelling backend resource: where edge cases go and labels come from (`human.collection` does the work)."""

from __future__ import annotations

from typing import Literal

from dagster import ConfigurableResource
from pydantic import Field

from alignment_dagster.human.collection import LabellingTarget
from alignment_dagster.human.label_studio import DEFAULT_TOKEN_ENV


class LabellingResource(ConfigurableResource):
    """`replay` answers from known dataset labels (demos, benchmarks); `file_queue` writes JSONL/CSV batches
    to storage and imports filled-in files; `label_studio` uses a Label Studio server (token from env)."""

    backend: Literal["replay", "file_queue", "label_studio"] = "replay"
    label_studio_url: str | None = Field(None, description="e.g. http://127.0.0.1:8080")
    token_env: str = Field(
        DEFAULT_TOKEN_ENV, description="Environment variable holding the Label Studio token."
    )

    def target(self) -> LabellingTarget:
        return LabellingTarget(self.backend, self.label_studio_url, self.token_env)
