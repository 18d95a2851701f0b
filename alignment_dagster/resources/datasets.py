"""Human-labelled pair files this deployment imports (`response_pairs`) and holds out (`reward_model`)."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field


class ImportedPairs(ConfigurableResource):
    """Pair files with known human labels (HH-RLHF JSONL or prompt/response_a/response_b/label tables), local
    or s3://; from ALIGNMENT_IMPORT_PAIRS, by default the shared HH-RLHF dev file when it is beside the
    repo."""

    sources: list[str] = Field(default_factory=list, description="Pair files with known labels.")
