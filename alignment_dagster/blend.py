"""Blends: how AI and human labels mix into one preference dataset (schema + plain merge logic)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from alignment_dagster.constitution import ConstitutionError, parse_yaml_model
from alignment_dagster.keys import canonical_json, sha256_hex, slugify, validate_key
from alignment_dagster.prompts import split_for

DATASET_COLUMNS = [
    "pair_id", "prompt_id", "prompt", "chosen", "rejected", "weight", "margin", "source", "split",
    "ai_label", "human_label", "confidence",
]


class BlendError(ConstitutionError):
    """A blend file that cannot be used; names the file and the field."""


class Blend(BaseModel):
    # An inf weight or margin would reach the training loss as inf.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(description="Blend name; its slug is the `blend` partition key.")
    description: str | None = None
    ai_min_confidence: float = Field(0.2, ge=0.0, le=1.0, description="AI labels below this confidence are dropped.")
    ai_weight: float = Field(1.0, ge=0.0, description="Loss weight of an AI label (times its confidence).")
    human_weight: float = Field(1.0, ge=0.0, description="Loss weight of a human label.")
    human_margin: float = Field(1.0, ge=0.0, description="Reward-model margin of a human label.")
    conflict_policy: Literal["human_wins", "drop"] = Field("human_wins", description="When AI and human disagree.")
    max_ai_share: float | None = Field(None, ge=0.0, le=1.0, description="Cap on the AI-only share of rows.")
    max_human_share: float | None = Field(None, ge=0.0, le=1.0, description="Cap on the human-only share of rows.")
    include_ties: bool = Field(
        False,
        description="Respect human ties: a pair a human called a tie is left out even if the AI labelled it. "
        "When false, human ties are ignored and the AI label (if any) is used.",
    )
    eval_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="Share of prompts held out (split by prompt).")
    judge_gate_override: str | None = Field(
        None, description="Use AI labels even when the judge signal gate failed for the constitution version; the "
        "reason is recorded in MLflow. Leave empty unless you mean it.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        v = v.strip()
        validate_key(slugify(v) or "-", "blend name slug")
        return v

    @model_validator(mode="after")
    def _some_weight(self) -> Blend:
        if self.ai_weight == 0 and self.human_weight == 0:
            raise ValueError("ai_weight and human_weight are both 0: no label could enter the dataset; give at "
                             "least one of them a positive weight")
        return self

    @property
    def partition_key(self) -> str:
        return slugify(self.name)

    @property
    def content_hash(self) -> str:
        data = self.model_dump(mode="json")
        if data["judge_gate_override"] is None:  # added later: unset, it leaves existing hashes as they were
            data.pop("judge_gate_override")
        return sha256_hex(canonical_json(data))

    @property
    def uses_ai(self) -> bool:
        return self.ai_weight > 0 and self.max_ai_share != 0.0


def parse_blend(raw: bytes | str, source: str) -> Blend:
    """Validate a blend from YAML text; errors name the file and the field, like constitutions."""
    return parse_yaml_model(raw, source, Blend, BlendError)


@dataclass
class BlendResult:
    dataset: pd.DataFrame
    counts: dict[str, int] = field(default_factory=dict)  # rows by source
    conflicts: Counter = field(default_factory=Counter)  # how AI/human disagreements were resolved
    dropped: Counter = field(default_factory=Counter)  # pairs left out, by reason


def blend_preferences(
    pairs: pd.DataFrame, ai: pd.DataFrame | None, human: pd.DataFrame | None, blend: Blend, *, split_salt: str = ""
) -> BlendResult:
    """Merge AI labels (pair_id, label A/B/abstain, confidence) and aggregated human labels (pair_id,
    choice A/B/tie) into TRL-ready conversational rows.

    Per pair: usable AI label = A/B with confidence >= ai_min_confidence (and ai_weight > 0); usable human
    label = A/B (a tie is usable only to veto, with include_ties). Both agree -> source `both`; they
    disagree -> the human label (`human_wins`) or no row (`drop`). Weight: ai_weight * confidence for AI,
    human_weight for human/both. Margin: the AI confidence, or human_margin. Share caps drop the
    lowest-confidence AI rows / hash-ordered human rows. Split is by prompt_id, so no prompt spans splits.
    """
    ai_by = ai.set_index("pair_id") if ai is not None and len(ai) else None
    hu_by = human.set_index("pair_id") if human is not None and len(human) else None
    result = BlendResult(pd.DataFrame(columns=DATASET_COLUMNS))
    rows: list[dict] = []
    for p in pairs.itertuples(index=False):
        ai_label = conf = None
        if ai_by is not None and p.pair_id in ai_by.index:
            r = ai_by.loc[p.pair_id]
            ai_label, conf = r["label"], float(r["confidence"])
        hu_label = hu_by.loc[p.pair_id, "choice"] if hu_by is not None and p.pair_id in hu_by.index else None

        ai_ok = blend.ai_weight > 0 and ai_label in ("A", "B") and conf is not None and conf >= blend.ai_min_confidence
        if hu_label == "tie":
            if blend.include_ties:
                result.dropped["human_tie"] += 1
                continue
            hu_label = None
        hu_ok = hu_label in ("A", "B") and blend.human_weight > 0

        if ai_ok and hu_ok:
            if ai_label == hu_label:
                label, source = hu_label, "both"
            elif blend.conflict_policy == "human_wins":
                result.conflicts["human_wins"] += 1
                label, source = hu_label, "human"
            else:
                result.conflicts["dropped"] += 1
                result.dropped["conflict"] += 1
                continue
        elif hu_ok:
            label, source = hu_label, "human"
        elif ai_ok:
            label, source = ai_label, "ai"
        else:
            if ai_label == "abstain":
                reason = "ai_abstained"
            elif ai_label in ("A", "B") and blend.ai_weight > 0:
                reason = "ai_low_confidence"
            else:
                reason = "no_label"
            result.dropped[reason] += 1
            continue

        chosen, rejected = (p.response_a, p.response_b) if label == "A" else (p.response_b, p.response_a)
        is_ai = source == "ai"
        rows.append({
            "pair_id": p.pair_id,
            "prompt_id": p.prompt_id,
            "prompt": [{"role": "user", "content": p.prompt}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "weight": blend.ai_weight * conf if is_ai else blend.human_weight,
            "margin": conf if is_ai else blend.human_margin,
            "source": source,
            "split": split_for(p.prompt_id, blend.eval_fraction, split_salt),
            "ai_label": ai_label if ai_label in ("A", "B", "abstain") else None,
            "human_label": hu_label,
            "confidence": conf,
        })

    rows = _apply_cap(rows, "ai", blend.max_ai_share, key=lambda r: r["confidence"], dropped=result.dropped)
    rows = _apply_cap(rows, "human", blend.max_human_share, key=lambda r: sha256_hex(r["pair_id"]),
                      dropped=result.dropped)
    if rows:
        result.dataset = pd.DataFrame(rows, columns=DATASET_COLUMNS)
    result.counts = {s: sum(r["source"] == s for r in rows) for s in ("ai", "human", "both")}
    return result


def _apply_cap(rows: list[dict], source: str, share: float | None, *, key, dropped: Counter) -> list[dict]:
    """Keep at most `share` of the final rows from `source`, dropping its lowest-`key` rows first."""
    if share is None:
        return rows
    mine = [r for r in rows if r["source"] == source]
    others = len(rows) - len(mine)
    # Largest n with n <= share * (others + n).
    allowed = len(mine) if share >= 1 else min(len(mine), int(share * others / (1 - share) + 1e-9))
    if allowed >= len(mine):
        return rows
    keep = {id(r) for r in sorted(mine, key=key, reverse=True)[:allowed]}
    dropped[f"{source}_share_cap"] += len(mine) - allowed
    return [r for r in rows if r["source"] != source or id(r) in keep]
