"""Quality checks on one judging run (position consistency and bias, abstention, balance, CoT parsing).

Plain functions; the asset checks on `ai_preferences` only report these results.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

QUALITY_CHECKS = [
    "position_consistency",
    "first_position_win_rate",
    "debiased_first_position_rate",
    "abstention_rate",
    "label_balance",
    "cot_parse_failure_rate",
]


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
    max_cot_parse_failure: float = 0.2  # share of chain-of-thought rationales that state no verdict


def first_position_win_rate(principles: pd.DataFrame) -> float:
    """Raw share of judge prompts (both orders) won by the reply shown first; 0.5 = no position bias."""
    n = len(principles)
    if not n:
        return float("nan")
    return float(
        ((principles["p_a_forward"] > 0.5).sum() + (principles["p_a_backward"] < 0.5).sum()) / (2 * n)
    )


def judge_quality(principles: pd.DataFrame, pairs: pd.DataFrame, t: QualityThresholds) -> list[CheckOutcome]:
    """Position consistency, first-position win rate, abstention rate and label balance of one run.

    first_position_win_rate is the raw share of judge prompts won by the reply shown first (both orders,
    before debiasing: a position-biased judge shows it here); the check itself bounds the *debiased*
    A-rate, which should sit near 0.5 when A/B slots are assigned at random.
    """
    return [*_position_checks(principles, t), *_label_checks(pairs, t), _cot_check(principles, t)]


def _position_checks(principles: pd.DataFrame, t: QualityThresholds) -> list[CheckOutcome]:
    # No principle votes: only a preference-model judge ran, which scores each reply alone (no positions).
    none = len(principles) == 0
    consistency = float("nan") if none else float(principles["order_consistent"].mean())
    first_wins = first_position_win_rate(principles)
    free = "; no LLM votes: position-free preference-model judge" if none else ""
    return [
        CheckOutcome(
            "position_consistency",
            none or consistency >= t.min_position_consistency,
            consistency,
            "share of principle votes where both orders prefer the same reply "
            f"(>= {t.min_position_consistency}{free})",
        ),
        CheckOutcome(
            "first_position_win_rate",
            none or abs(first_wins - 0.5) <= 0.5,
            first_wins,
            "raw share of judge prompts won by the reply shown first (reported; 0.5 = no position bias)",
        ),
    ]


def _label_checks(pairs: pd.DataFrame, t: QualityThresholds) -> list[CheckOutcome]:
    labelled = pairs[pairs["label"].isin(["A", "B"])]
    abstention = 1.0 - len(labelled) / len(pairs) if len(pairs) else float("nan")
    a_share = float((labelled["label"] == "A").mean()) if len(labelled) else float("nan")
    return [
        CheckOutcome(
            "debiased_first_position_rate",
            len(labelled) > 0 and abs(a_share - 0.5) <= t.max_first_position_bias,
            a_share,
            f"share of labelled pairs won by slot A after debiasing (0.5 +- {t.max_first_position_bias})",
        ),
        CheckOutcome(
            "abstention_rate",
            abstention <= t.max_abstention_rate,
            abstention,
            f"share of pairs the judge abstained on (<= {t.max_abstention_rate})",
        ),
        CheckOutcome(
            "label_balance",
            len(labelled) > 0 and abs(a_share - 0.5) <= t.max_label_imbalance,
            a_share,
            f"share of A among labelled pairs (0.5 +- {t.max_label_imbalance})",
        ),
    ]


def _cot_check(principles: pd.DataFrame, t: QualityThresholds) -> CheckOutcome:
    rationales = (
        pd.concat([principles["rationale_forward"], principles["rationale_backward"]]).dropna()
        if "rationale_forward" in principles
        else pd.Series(dtype=object)
    )
    # "No verdict": the rationale never names reply A or B on its own, so it cannot have chosen between them.
    no_verdict = (
        float((~rationales.astype(str).str.contains(r"\b[AB]\b")).mean()) if len(rationales) else float("nan")
    )
    return CheckOutcome(
        "cot_parse_failure_rate",
        not no_verdict > t.max_cot_parse_failure,
        no_verdict,
        f"share of chain-of-thought rationales naming neither A nor B (<= {t.max_cot_parse_failure}; "
        "NaN: the template does not think first)",
    )
