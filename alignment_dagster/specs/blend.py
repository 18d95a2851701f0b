"""Blends: how AI and human labels mix into one preference dataset (the schema; `data.blending` merges)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from alignment_dagster.core.keys import canonical_json, checked_slug, sha256_hex, slugify, validate_key
from alignment_dagster.core.reporting import StageReport
from alignment_dagster.core.yaml_files import SPEC_CONFIG, SpecError, SpecVersion, parse_yaml_model

# A weight of 1e308 overflows the normalised DPO weights, one of 1e-320 rounds every weight to 0; 0 itself
# means "not this source".
MIN_WEIGHT, MAX_WEIGHT = 1e-6, 1e6
MAX_MARGIN = 100.0


class BlendError(SpecError):
    """A blend file that cannot be used; names the file and the field."""


class RetrainPolicy(BaseModel):
    """When a changed dataset retrains `reward_model` and `dpo_policy`: at least `min_new_rows` training rows
    new or changed since the rows the current model trained on, and at least `min_new_share` of those rows.
    Below that the partition keeps its model (marked stale); `force_retrain` in a run config trains anyway."""

    model_config = SPEC_CONFIG

    min_new_rows: int = Field(4, ge=1, description="New or changed training rows needed to retrain.")
    min_new_share: float = Field(
        0.05, ge=0.0, le=1.0, description="... and their share of the rows trained on."
    )


class Blend(BaseModel):
    # An inf weight or margin would reach the training loss as inf; strict: `yes` is no weight.
    model_config = SPEC_CONFIG

    name: str = Field(description="Blend name; its slug is the `blend` partition key.")
    description: str | None = None
    ai_min_confidence: float = Field(
        0.2, ge=0.0, le=1.0, description="AI labels below this confidence are dropped."
    )
    ai_weight: float = Field(
        1.0, ge=0.0, description="Loss weight of an AI label (times its confidence): 0, or 1e-6 to 1e6."
    )
    human_weight: float = Field(1.0, ge=0.0, description="Loss weight of a human label: 0, or 1e-6 to 1e6.")
    human_margin: float = Field(
        1.0, ge=0.0, le=MAX_MARGIN, description="Reward-model margin of a human label (0 to 100)."
    )
    conflict_policy: Literal["human_wins", "drop"] = Field(
        "human_wins", description="When AI and human disagree."
    )
    max_ai_share: float | None = Field(None, ge=0.0, le=1.0, description="Cap on the AI-only share of rows.")
    max_human_share: float | None = Field(
        None, ge=0.0, le=1.0, description="Cap on the human-only share of rows."
    )
    include_ties: bool = Field(
        False,
        description="Respect human ties: a pair a human called a tie is left out even if the AI labelled it. "
        "When false, human ties are ignored and the AI label (if any) is used.",
    )
    eval_fraction: float = Field(
        0.2, ge=0.0, lt=1.0, description="Share of prompts held out (split by prompt)."
    )
    known_weight: float = Field(
        0.0,
        ge=0.0,
        description="Loss weight of an imported known human label (the training part of the "
        "imported file; its held-out part never trains): 0 (imported labels are not used), or 1e-6 to 1e6.",
    )
    retrain: RetrainPolicy = Field(default_factory=RetrainPolicy, description="When changed data retrains.")
    revision_weight: float = Field(
        0.0,
        ge=0.0,
        description="Loss weight of an accepted revision over its original (Constitutional AI phase 1, "
        "`sft_dataset`), times the judge's confidence in it. 0: revision pairs are not used.",
    )
    start_from: Literal["base", "sft"] = Field(
        "base",
        description="What DPO trains: the base model, or the constitution version's `sft_policy` (its "
        "adapter merged, and the SFT model as DPO's reference: the two-phase flow).",
    )
    judge_gate_override: str | None = Field(
        None,
        description="Use AI labels even when the judge signal gate failed for the constitution version; the "
        "reason is recorded in MLflow. Leave empty unless you mean it.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        v = v.strip()
        validate_key(slugify(v) or "-", "blend name slug")
        checked_slug(v, "name")
        return v

    @field_validator("ai_weight", "human_weight", "known_weight")
    @classmethod
    def _weight(cls, v: float) -> float:
        if v != 0 and not MIN_WEIGHT <= v <= MAX_WEIGHT:
            raise ValueError(f"must be 0 or between {MIN_WEIGHT:g} and {MAX_WEIGHT:g}")
        return v

    @model_validator(mode="after")
    def _some_weight(self) -> Blend:
        if not any((self.ai_weight, self.human_weight, self.known_weight, self.revision_weight)):
            raise ValueError(
                "ai_weight, human_weight, known_weight and revision_weight are all 0: no label could enter "
                "the dataset; give at least one of them a positive weight"
            )
        return self

    @property
    def partition_key(self) -> str:
        return slugify(self.name)

    @property
    def content_hash(self) -> str:
        data = self.model_dump(mode="json")
        # Added later: at their defaults they are left out, so existing blends keep their hashes.
        for key, default in (
            ("judge_gate_override", None),
            ("known_weight", 0.0),
            ("retrain", RetrainPolicy().model_dump()),
            ("revision_weight", 0.0),
            ("start_from", "base"),
        ):
            if data[key] == default:
                data.pop(key)
        return sha256_hex(canonical_json(data))

    @property
    def uses_ai(self) -> bool:
        return self.ai_weight > 0 and self.max_ai_share != 0.0


class BlendVersion(SpecVersion):
    """One blend version as the `blend` asset stores it."""

    spec: Blend = Field(alias="blend")

    def report(self) -> StageReport:
        spec = self.spec
        report = StageReport(tags={"blend.name": spec.name, "blend.hash": self.content_hash})
        report.add(name=spec.name, content_hash=self.content_hash, source=self.source)
        report.params.update({"blend": spec.model_dump(), "blend.source": self.source})
        report.detail("blend", spec.model_dump())
        return report.text("blend.yaml", self.yaml)


def parse_blend(raw: bytes | str, source: str) -> Blend:
    """Validate a blend from YAML text; errors name the file and the field, like constitutions."""
    return parse_yaml_model(raw, source, Blend, BlendError)
