"""Position debiasing, weighted principle votes, abstention, and ensembles: plain functions.

Conventions: every pair is judged in two orders. In the *forward* order the pair's A is shown first
(as letter A); in the *backward* order B is shown first. `p_first` is the judge's probability for the
letter shown first. Mapped back to the original A:

    p_a_forward  = p_first(forward)
    p_a_backward = 1 - p_first(backward)
    p_a          = (p_a_forward + p_a_backward) / 2

A judge that always says "A" gets p_a = 0.5 on every pair: position bias cancels instead of deciding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from alignment_dagster.specs.constitution import JudgeSettings

PAIR_COLUMNS = [
    "pair_id",
    "label",
    "p_a",
    "p_chosen",
    "confidence",
    "vote_share",
    "n_principles",
    "n_consistent",
    "abstain_reason",
]


@dataclass(frozen=True)
class PrincipleVote:
    pair_id: str
    principle_id: str
    p_a_forward: float
    p_a_backward: float

    @property
    def p_a(self) -> float:
        return (self.p_a_forward + self.p_a_backward) / 2

    @property
    def order_consistent(self) -> bool:
        """Both orders prefer the same original reply (a 0.5 in either order is not a preference)."""
        return (self.p_a_forward - 0.5) * (self.p_a_backward - 0.5) > 0


def vote_from_orders(
    pair_id: str, principle_id: str, p_first_forward: float, p_first_backward: float
) -> PrincipleVote:
    return PrincipleVote(pair_id, principle_id, p_first_forward, 1.0 - p_first_backward)


def abstained_row(pair_id: str, reason: str, n_principles: int) -> dict:
    """A pair the judge left unlabelled before weighing any vote (PAIR_COLUMNS): an even, unconfident row."""
    return {
        "pair_id": pair_id,
        "label": "abstain",
        "p_a": 0.5,
        "p_chosen": 0.5,
        "confidence": 0.0,
        "vote_share": 0.0,
        "n_principles": n_principles,
        "n_consistent": 0,
        "abstain_reason": reason,
    }


def aggregate_pair(
    pair_id: str, votes: Sequence[PrincipleVote], weights: dict[str, float], settings: JudgeSettings
) -> dict:
    """Weighted vote over principles for one pair -> label (A/B/abstain), probabilities and the reason.

    p_a is the weight-averaged debiased probability; the label follows its side of 0.5. vote_share is the
    share of principle weight whose own p_a falls on the label's side. Abstention reasons, first that
    applies: no_principles, order_inconsistent, low_confidence, vote_split.
    """
    if not votes:
        return abstained_row(pair_id, "no_principles", n_principles=0)
    total = sum(weights[v.principle_id] for v in votes)
    p_a = sum(weights[v.principle_id] * v.p_a for v in votes) / total
    side_a = p_a >= 0.5
    agreeing = sum(weights[v.principle_id] for v in votes if (v.p_a > 0.5 if side_a else v.p_a < 0.5))
    vote_share = agreeing / total
    confidence = abs(2.0 * p_a - 1.0)
    n_consistent = sum(v.order_consistent for v in votes)
    reason = None
    if n_consistent / len(votes) < settings.min_consistent_fraction:
        reason = "order_inconsistent"
    elif confidence < settings.min_confidence or p_a == 0.5:
        reason = "low_confidence"
    elif vote_share < settings.min_vote_share:
        reason = "vote_split"
    return {
        "pair_id": pair_id,
        "label": "abstain" if reason else ("A" if side_a else "B"),
        "p_a": p_a,
        "p_chosen": max(p_a, 1.0 - p_a),
        "confidence": confidence,
        "vote_share": vote_share,
        "n_principles": len(votes),
        "n_consistent": n_consistent,
        "abstain_reason": reason,
    }


def aggregate(
    votes: Sequence[PrincipleVote],
    pair_ids: Sequence[str],
    weights: dict[str, float],
    settings: JudgeSettings,
) -> pd.DataFrame:
    """Per-pair labels for `pair_ids` (pairs with no applicable principle abstain with no_principles)."""
    by_pair: dict[str, list[PrincipleVote]] = {pid: [] for pid in pair_ids}
    for v in votes:
        by_pair.setdefault(v.pair_id, []).append(v)
    rows = [aggregate_pair(pid, vs, weights, settings) for pid, vs in by_pair.items()]
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def combine_judges(per_judge: Sequence[pd.DataFrame], agreement: str = "all") -> pd.DataFrame:
    """Ensemble several judges' per-pair results.

    p_a (and confidence, vote_share) are averaged. `all`: a pair is labelled only when every judge labels
    it the same way; `majority`: when more than half of the judges give the same label. Judges labelling
    both A and B make the pair abstain with `disagreement`; otherwise an abstention keeps the first
    abstaining judge's reason.
    """
    if not per_judge:
        raise ValueError("an ensemble needs at least one judge")
    if len(per_judge) == 1:
        return per_judge[0].copy()
    indexed = [df.set_index("pair_id") for df in per_judge]
    n = len(indexed)
    rows = []
    for pid in indexed[0].index:
        rs = [df.loc[pid] for df in indexed]
        labels = [r["label"] for r in rs]
        p_a = sum(float(r["p_a"]) for r in rs) / n
        a, b = labels.count("A"), labels.count("B")
        if agreement == "all":
            label = labels[0] if labels[0] != "abstain" and labels.count(labels[0]) == n else None
        elif agreement == "majority":
            label = "A" if a > n / 2 else "B" if b > n / 2 else None
        else:
            raise ValueError(f"unknown ensemble agreement {agreement!r}; use 'all' or 'majority'")
        reason = None
        if label is None:
            reason = (
                "disagreement"
                if a and b
                else next(r["abstain_reason"] for r in rs if r["label"] == "abstain")
            )
        rows.append(
            {
                "pair_id": pid,
                "label": label or "abstain",
                "p_a": p_a,
                "p_chosen": max(p_a, 1.0 - p_a),
                "confidence": abs(2.0 * p_a - 1.0),
                "vote_share": sum(float(r["vote_share"]) for r in rs) / n,
                "n_principles": int(rs[0]["n_principles"]),
                "n_consistent": min(int(r["n_consistent"]) for r in rs),
                "abstain_reason": reason,
            }
        )
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)
