"""Judge health: quality checks on a judging run, and the gate that asks whether the judge has signal.

Plain functions; the asset checks on `ai_preferences` only report these results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import pandas as pd


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    value: float
    description: str


@dataclass(frozen=True)
class QualityThresholds:
    min_position_consistency: float = 0.5
    max_first_position_bias: float = 0.15  # |debiased A-label rate - 0.5|
    max_abstention_rate: float = 0.8
    max_label_imbalance: float = 0.3  # |share of A among labelled - 0.5|


def judge_quality(principles: pd.DataFrame, pairs: pd.DataFrame, t: QualityThresholds) -> list[CheckOutcome]:
    """Position consistency, first-position win rate, abstention rate and label balance of one run.

    first_position_win_rate is the raw share of judge prompts won by the reply shown first (both orders,
    before debiasing: a position-biased judge shows it here); the check itself bounds the *debiased*
    A-rate, which should sit near 0.5 when A/B slots are assigned at random.
    """
    n_votes = len(principles)
    consistency = float(principles["order_consistent"].mean()) if n_votes else float("nan")
    first_wins = (
        float(((principles["p_a_forward"] > 0.5).sum() + (principles["p_a_backward"] < 0.5).sum()) / (2 * n_votes))
        if n_votes else float("nan")
    )
    labelled = pairs[pairs["label"].isin(["A", "B"])]
    abstention = 1.0 - len(labelled) / len(pairs) if len(pairs) else float("nan")
    a_share = float((labelled["label"] == "A").mean()) if len(labelled) else float("nan")
    return [
        CheckOutcome("position_consistency", consistency >= t.min_position_consistency, consistency,
                     f"share of principle votes where both orders prefer the same reply (>= {t.min_position_consistency})"),
        CheckOutcome("first_position_win_rate", abs(first_wins - 0.5) <= 0.5, first_wins,
                     "raw share of judge prompts won by the reply shown first (reported; 0.5 = no position bias)"),
        CheckOutcome("debiased_first_position_rate", len(labelled) > 0 and abs(a_share - 0.5) <= t.max_first_position_bias,
                     a_share, f"share of labelled pairs won by slot A after debiasing (0.5 +- {t.max_first_position_bias})"),
        CheckOutcome("abstention_rate", abstention <= t.max_abstention_rate, abstention,
                     f"share of pairs the judge abstained on (<= {t.max_abstention_rate})"),
        CheckOutcome("label_balance", len(labelled) > 0 and abs(a_share - 0.5) <= t.max_label_imbalance, a_share,
                     f"share of A among labelled pairs (0.5 +- {t.max_label_imbalance})"),
    ]


def binomial_sf(k: int, n: int, p: float = 0.5) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exact (log-space, stable for n in the thousands)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    logs = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p) + (n - i) * math.log1p(-p)
        for i in range(k, n + 1)
    ]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(x - top) for x in logs))


@dataclass(frozen=True)
class GateResult:
    verdict: Literal["pass", "fail", "undecided"]
    n: int
    agreements: int
    agreement: float
    p_value: float
    alpha: float
    min_n: int

    @property
    def reason(self) -> str:
        if self.verdict == "undecided":
            return f"only {self.n} judge-human comparisons, {self.min_n} needed to decide: ask for more audit labels"
        word = "significantly" if self.verdict == "pass" else "not significantly"
        return (f"judge-human agreement {self.agreement:.3f} on n={self.n} is {word} above chance "
                f"(one-sided binomial p={self.p_value:.3g}, alpha={self.alpha})")


def signal_gate(agreements: int, n: int, *, alpha: float = 0.05, min_n: int = 30) -> GateResult:
    """Is judge-human agreement above chance (0.5)? Too few comparisons is 'undecided', not pass or fail."""
    p_value = binomial_sf(agreements, n) if n else 1.0
    agreement = agreements / n if n else float("nan")
    if n < min_n:
        verdict = "undecided"
    else:
        verdict = "pass" if p_value < alpha else "fail"
    return GateResult(verdict, n, agreements, agreement, p_value, alpha, min_n)
