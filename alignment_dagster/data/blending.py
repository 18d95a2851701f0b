"""Blending AI and human labels into one TRL-ready preference dataset, by a blend's rules. Plain functions."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pandas as pd

from alignment_dagster.core.keys import sha256_hex
from alignment_dagster.data.pairs import TRAIN, heldout_ids, pair_id_for
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
SOURCES = ("ai", "human", "both")


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
    known: pd.DataFrame | None = None,
    revisions: pd.DataFrame | None = None,
    split_salt: str = "",
) -> BlendResult:
    """Merge AI labels (pair_id, label A/B/abstain, confidence), aggregated human labels (pair_id, choice
    A/B/tie) and imported known labels (`known`: the KNOWN_COLUMNS table) into TRL-ready conversational rows.

    Held-out known pairs never become rows, whoever labelled them (counted as `heldout`): they measure the
    judge and the reward model. The known training part enters with `known_weight` (source `known`).

    Per pair: usable AI label = A/B with confidence >= ai_min_confidence (and ai_weight > 0); usable human
    label = A/B (a tie is usable only to veto, with include_ties). Both agree -> source `both`; they
    disagree -> the human label (`human_wins`) or no row (`drop`). Weight: ai_weight * confidence for AI,
    human_weight for human/both. Margin: the AI confidence, or human_margin. Share caps drop the
    lowest-confidence AI rows / hash-ordered human rows. Split is by prompt_id, so no prompt spans splits.

    `revisions` (sft_dataset rows: prompt_id, prompt, revision, original, p_revision, confidence) add, with
    `revision_weight` > 0, each accepted revision over its original (source `revision`), weighted
    `revision_weight * confidence` with the judge's confidence as margin; a revision the constitution's
    whole judge does not prefer (p_revision <= 0.5) is left out (`revision_not_preferred`).
    """
    ai_by = ai.set_index("pair_id") if ai is not None and len(ai) else None
    hu_by = human.set_index("pair_id") if human is not None and len(human) else None
    result = BlendResult(pd.DataFrame(columns=DATASET_COLUMNS))
    held_out = heldout_ids(known) if known is not None else set()
    rows = _extra_rows(known, revisions, blend, split_salt, result.dropped)
    for p in pairs.itertuples(index=False):
        if p.pair_id in held_out:
            result.dropped["heldout"] += 1
            continue
        ai_label = conf = None
        if ai_by is not None and p.pair_id in ai_by.index:
            ai_label, conf = ai_by.loc[p.pair_id, "label"], float(ai_by.loc[p.pair_id, "confidence"])
        hu_label = hu_by.loc[p.pair_id, "choice"] if hu_by is not None and p.pair_id in hu_by.index else None
        if hu_label == "tie" and blend.include_ties:
            result.dropped["human_tie"] += 1
            continue
        decided = _decide(ai_label, conf, None if hu_label == "tie" else hu_label, blend, result)
        if decided is not None:
            rows.append(
                _row(p, *decided, ai_label, None if hu_label == "tie" else hu_label, conf, blend, split_salt)
            )
    rows = _apply_cap(rows, "ai", blend.max_ai_share, key=lambda r: r["confidence"], dropped=result.dropped)
    rows = _apply_cap(
        rows, "human", blend.max_human_share, key=lambda r: sha256_hex(r["pair_id"]), dropped=result.dropped
    )
    if rows:
        result.dataset = pd.DataFrame(rows, columns=DATASET_COLUMNS)
    sources = (*SOURCES, *(["known"] if blend.known_weight > 0 else []))
    sources = (*sources, *(["revision"] if blend.revision_weight > 0 else []))
    result.counts = {s: sum(r["source"] == s for r in rows) for s in sources}
    return result


def _extra_rows(known, revisions, blend: Blend, split_salt: str, dropped: Counter) -> list[dict]:
    """Rows that need no judging: the known labels' training part and accepted revisions, by their weights."""
    rows = _known_rows(known, blend, split_salt) if known is not None and blend.known_weight > 0 else []
    if revisions is not None and blend.revision_weight > 0:
        rows += _revision_rows(revisions, blend, split_salt, dropped)
    return rows


def _revision_rows(revisions: pd.DataFrame, blend: Blend, split_salt: str, dropped: Counter) -> list[dict]:
    rows = []
    for r in revisions.itertuples(index=False):
        if not r.p_revision > 0.5:
            dropped["revision_not_preferred"] += 1
            continue
        rows.append(
            {
                "pair_id": pair_id_for(r.prompt, r.revision, r.original),
                "prompt_id": r.prompt_id,
                "prompt": [{"role": "user", "content": r.prompt}],
                "chosen": [{"role": "assistant", "content": r.revision}],
                "rejected": [{"role": "assistant", "content": r.original}],
                "weight": blend.revision_weight * float(r.confidence),
                "margin": float(r.confidence),
                "source": "revision",
                "split": split_for(r.prompt_id, blend.eval_fraction, split_salt),
                "ai_label": None,
                "human_label": None,
                "confidence": float(r.confidence),
            }
        )
    return rows


def _known_rows(known: pd.DataFrame, blend: Blend, split_salt: str) -> list[dict]:
    rows = known_rows(known, TRAIN, blend.eval_fraction, split_salt)
    return [{**row, "weight": blend.known_weight, "margin": blend.human_margin} for row in rows]


def known_rows(
    known: pd.DataFrame,
    part: str,
    eval_fraction: float = 0.0,
    split_salt: str = "",
    exclude_prompt_ids: set[str] = frozenset(),
) -> list[dict]:
    """Preference rows (DATASET_COLUMNS, weight and margin 1) of one part (`train`/`heldout`) of the known
    labels, A/B only (a tie has no side to learn or score)."""
    if not len(known):
        return []
    rows = known[
        (known["split"] == part)
        & known["label"].isin(["A", "B"])
        & ~known["prompt_id"].isin(exclude_prompt_ids)
    ]
    unit = Blend(name="known", ai_weight=0.0, human_weight=1.0, eval_fraction=eval_fraction)
    return [
        _row(p, p.label, "known", None, None, None, unit, split_salt) for p in rows.itertuples(index=False)
    ]


def _decide(
    ai_label, conf: float | None, hu_label, blend: Blend, result: BlendResult
) -> tuple[str, str] | None:
    """(label, source) of one pair, or None with the reason counted in `result` when it yields no row."""
    ai_ok = (
        blend.ai_weight > 0
        and ai_label in ("A", "B")
        and conf is not None
        and conf >= blend.ai_min_confidence
    )
    hu_ok = hu_label in ("A", "B") and blend.human_weight > 0
    if ai_ok and hu_ok:
        if ai_label == hu_label:
            return hu_label, "both"
        if blend.conflict_policy == "human_wins":
            result.conflicts["human_wins"] += 1
            return hu_label, "human"
        result.conflicts["dropped"] += 1
        result.dropped["conflict"] += 1
        return None
    if hu_ok:
        return hu_label, "human"
    if ai_ok:
        return ai_label, "ai"
    if ai_label == "abstain":
        result.dropped["ai_abstained"] += 1
    elif ai_label in ("A", "B") and blend.ai_weight > 0:
        result.dropped["ai_low_confidence"] += 1
    else:
        result.dropped["no_label"] += 1
    return None


def _row(
    p, label: str, source: str, ai_label, hu_label, conf: float | None, blend: Blend, split_salt: str
) -> dict:
    chosen, rejected = (p.response_a, p.response_b) if label == "A" else (p.response_b, p.response_a)
    is_ai = source == "ai"
    return {
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
