"""Human labels per pair: majority, and agreement between annotators (percent, Fleiss' and Cohen's kappa).

Input is the `human_labels` contract (`human.labels`); only each annotator's latest label on a pair counts.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from alignment_dagster.human.labels import CHOICES, latest_per_annotator

AGGREGATE_COLUMNS = ["pair_id", "choice", "n_annotators", "agreement", "n_a", "n_b", "n_tie"]


def majority(counts: Counter) -> str:
    """The most common choice; several choices sharing the top count make "tie" (humans did not settle it).

    So A=2, B=2 -> tie; A=1, tie=1 -> tie; A=2, B=1 -> A; tie=2, A=1 -> tie.
    """
    top = max(counts.values())
    winners = [c for c in CHOICES if counts.get(c, 0) == top]
    return winners[0] if len(winners) == 1 else "tie"


def aggregate_labels(labels: pd.DataFrame) -> pd.DataFrame:
    """Per pair: majority choice, n_annotators, agreement, and the vote counts.

    agreement = (annotators giving the most common choice) / n_annotators: 1.0 for a single annotator or
    a unanimous pair, 0.5 for a 1-1 split (whose choice is "tie"). Rows come out sorted by pair_id.
    """
    df = latest_per_annotator(labels)
    out = []
    for pid, group in df.groupby("pair_id", sort=True):
        counts = Counter(group["choice"])
        n = int(sum(counts.values()))
        out.append(
            {
                "pair_id": pid,
                "choice": majority(counts),
                "n_annotators": n,
                "agreement": max(counts.values()) / n,
                "n_a": counts.get("A", 0),
                "n_b": counts.get("B", 0),
                "n_tie": counts.get("tie", 0),
            }
        )
    return pd.DataFrame(out, columns=AGGREGATE_COLUMNS)


def cohen_kappa(x: Sequence[str], y: Sequence[str], categories: Sequence[str] | None = None) -> float | None:
    """Cohen's kappa of two raters' paired labels: (p_o - p_e) / (1 - p_e).

    None when undefined: no items, or p_e == 1 (both raters used one and the same category throughout,
    so chance explains everything and agreement carries no information).
    """
    if len(x) != len(y):
        raise ValueError(f"cohen_kappa: {len(x)} labels against {len(y)}")
    n = len(x)
    if n == 0:
        return None
    cats = list(categories) if categories is not None else sorted(set(x) | set(y))
    p_o = sum(a == b for a, b in zip(x, y, strict=True)) / n
    cx, cy = Counter(x), Counter(y)
    p_e = sum(cx[c] * cy[c] for c in cats) / (n * n)
    if p_e >= 1.0:
        return None
    return (p_o - p_e) / (1.0 - p_e)


def fleiss_kappa(item_counts: Sequence[dict[str, int]], categories: Sequence[str] = CHOICES) -> float | None:
    """Fleiss' kappa from per-item category counts (each item needs >= 2 ratings).

    Items may have different numbers of raters: P_i = (sum_j n_ij^2 - n_i) / (n_i (n_i - 1)), P-bar is their
    mean, p_j = (ratings in j) / (all ratings), P_e = sum_j p_j^2. With a constant number of raters this
    is the textbook Fleiss' kappa. None when there are no items or P_e == 1.
    """
    items = [c for c in item_counts if sum(c.values()) >= 2]
    if not items:
        return None
    p_items = []
    totals: Counter = Counter()
    for c in items:
        n_i = sum(c.values())
        p_items.append((sum(v * v for v in c.values()) - n_i) / (n_i * (n_i - 1)))
        totals.update(c)
    n_all = sum(totals.values())
    p_bar = sum(p_items) / len(p_items)
    p_e = sum((totals[j] / n_all) ** 2 for j in categories)
    if p_e >= 1.0:
        return None
    return (p_bar - p_e) / (1.0 - p_e)


@dataclass(frozen=True)
class AgreementReport:
    """Inter-annotator agreement over pairs labelled by at least two annotators."""

    n_items: int
    n_annotators: int
    n_rating_pairs: int
    percent_agreement: float | None  # agreeing (rater, rater) pairs on the same item / all such pairs
    fleiss_kappa: float | None
    cohen_kappa: float | None  # only when exactly two annotators labelled the multi-rated items

    def as_dict(self) -> dict[str, float | int | None]:
        return dict(self.__dict__)


def inter_annotator_agreement(labels: pd.DataFrame) -> AgreementReport:
    """Pairwise percent agreement, Fleiss' kappa (A/B/tie), and Cohen's kappa where two annotators.

    Only pairs with >= 2 annotators count. Percent agreement pools every pair of annotators on every item:
    an item labelled A, A, B contributes 3 rater pairs of which 1 agrees. Cohen's kappa is reported when
    exactly two distinct annotators appear on those items, on the items both labelled.
    """
    df = latest_per_annotator(labels)
    multi = df.groupby("pair_id").filter(lambda g: len(g) >= 2) if not df.empty else df
    if multi.empty:
        return AgreementReport(0, 0, 0, None, None, None)
    agree = total = 0
    counts = []
    for _, g in multi.groupby("pair_id", sort=True):
        choices = list(g["choice"])
        for a, b in itertools.combinations(choices, 2):
            total += 1
            agree += a == b
        counts.append(dict(Counter(choices)))
    annotators = sorted(set(multi["annotator"]))
    cohen = None
    if len(annotators) == 2:
        wide = multi.pivot(index="pair_id", columns="annotator", values="choice").dropna()
        cohen = cohen_kappa(list(wide[annotators[0]]), list(wide[annotators[1]]), CHOICES)
    return AgreementReport(
        n_items=len(counts),
        n_annotators=len(annotators),
        n_rating_pairs=total,
        percent_agreement=agree / total,
        fleiss_kappa=fleiss_kappa(counts),
        cohen_kappa=cohen,
    )
