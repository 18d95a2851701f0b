"""Blending AI and human labels into one TRL-ready preference dataset, by a blend's rules. Plain functions."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pandas as pd

from alignment_dagster.core.keys import sha256_hex
from alignment_dagster.data.prompts import split_for
from alignment_dagster.specs.blend import Blend

DATASET_COLUMNS = [
    "pair_id",
    "prompt_id",
    "prompt",
    "chosen",
    "rejected",
    "weight",
    "margin",
    "source",
    "split",
    "ai_label",
    "human_label",
    "confidence",
]


@dataclass
class BlendResult:
    dataset: pd.DataFrame
    counts: dict[str, int] = field(default_factory=dict)  # rows by source
    conflicts: Counter = field(default_factory=Counter)  # how AI/human disagreements were resolved
    dropped: Counter = field(default_factory=Counter)  # pairs left out, by reason


def blend_preferences(
    pairs: pd.DataFrame,
    ai: pd.DataFrame | None,
    human: pd.DataFrame | None,
    blend: Blend,
    *,
    split_salt: str = "",
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

        ai_ok = (
            blend.ai_weight > 0
            and ai_label in ("A", "B")
            and conf is not None
            and conf >= blend.ai_min_confidence
        )
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
        rows.append(
            {
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
            }
        )

    rows = _apply_cap(rows, "ai", blend.max_ai_share, key=lambda r: r["confidence"], dropped=result.dropped)
    rows = _apply_cap(
        rows, "human", blend.max_human_share, key=lambda r: sha256_hex(r["pair_id"]), dropped=result.dropped
    )
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
