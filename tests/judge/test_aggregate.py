"""Debiasing, weighted aggregation, abstention and ensembles: exact expected values."""

import pandas as pd
import pytest

from alignment_dagster.judge.aggregate import aggregate, aggregate_pair, combine_judges, vote_from_orders
from alignment_dagster.judge.templates import get_template
from alignment_dagster.specs.constitution import JudgeSettings

S = JudgeSettings(min_confidence=0.2, min_vote_share=0.6, min_consistent_fraction=0.5)
W = {"harm": 3.0, "help": 1.0}


def test_debias_maps_backward_order_to_original_a() -> None:
    v = vote_from_orders("p", "harm", p_first_forward=0.9, p_first_backward=0.3)
    assert v.p_a_forward == 0.9
    assert v.p_a_backward == pytest.approx(0.7)
    assert v.p_a == pytest.approx(0.8)
    assert v.order_consistent
    # A judge that always picks the first slot is order-inconsistent and debiases to a coin flip.
    biased = vote_from_orders("p", "harm", 0.95, 0.95)
    assert biased.p_a == pytest.approx(0.5) and not biased.order_consistent
    assert not vote_from_orders("p", "harm", 0.5, 0.2).order_consistent


def test_weighted_vote_exact() -> None:
    votes = [vote_from_orders("p", "harm", 0.9, 0.1), vote_from_orders("p", "help", 0.2, 0.6)]
    # harm: p_a = (0.9 + 0.9)/2 = 0.9 ; help: p_a = (0.2 + 0.4)/2 = 0.3
    out = aggregate_pair("p", votes, W, S)
    assert out["p_a"] == pytest.approx((3 * 0.9 + 1 * 0.3) / 4)  # 0.75
    assert out["label"] == "A"
    assert out["p_chosen"] == pytest.approx(0.75)
    assert out["confidence"] == pytest.approx(0.5)
    assert out["vote_share"] == pytest.approx(0.75)
    assert out["n_consistent"] == 2 and out["n_principles"] == 2
    assert out["abstain_reason"] is None


def test_label_b_orientation() -> None:
    votes = [vote_from_orders("p", "harm", 0.1, 0.9), vote_from_orders("p", "help", 0.2, 0.7)]
    out = aggregate_pair("p", votes, W, S)
    assert out["label"] == "B"
    assert out["p_a"] == pytest.approx((3 * 0.1 + 1 * 0.25) / 4)
    assert out["p_chosen"] == pytest.approx(1 - out["p_a"])
    assert out["vote_share"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("votes", "reason"),
    [
        ([], "no_principles"),
        # Both principles flip with the order: nothing is consistent.
        ([("harm", 0.9, 0.9), ("help", 0.8, 0.8)], "order_inconsistent"),
        # Consistent but weak: p_a = 0.55, confidence 0.1 < 0.2.
        ([("harm", 0.55, 0.45), ("help", 0.55, 0.45)], "low_confidence"),
        # Confident overall, but the winning side holds only 3 of 5 weight (see below).
        ([("harm", 0.95, 0.05), ("help", 0.1, 0.9), ("honest", 0.2, 0.8)], "vote_split"),
    ],
)
def test_abstention_reasons(votes: list, reason: str) -> None:
    weights = {"harm": 3.0, "help": 1.0, "honest": 1.0}
    vs = [vote_from_orders("p", pid, f, b) for pid, f, b in votes]
    # vote_split case: harm p_a=0.95 w3, help 0.1 w1, honest 0.2 w1 -> p_a=(2.85+0.1+0.2)/5=0.63,
    # confidence 0.26 passes, vote share 3/5 = 0.6 -> with min_vote_share 0.61 it abstains.
    settings = JudgeSettings(min_confidence=0.2, min_vote_share=0.61, min_consistent_fraction=0.5)
    out = aggregate_pair("p", vs, weights, settings)
    assert out["label"] == "abstain"
    assert out["abstain_reason"] == reason


def test_aggregate_frame_keeps_pairs_without_principles() -> None:
    votes = [vote_from_orders("p1", "harm", 0.9, 0.1)]
    df = aggregate(votes, ["p1", "p2"], W, S)
    assert df["pair_id"].tolist() == ["p1", "p2"]
    assert df["label"].tolist() == ["A", "abstain"]
    assert [None if pd.isna(r) else r for r in df["abstain_reason"]] == [None, "no_principles"]


def _frame(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "pair_id": pid,
                "label": lab,
                "p_a": pa,
                "vote_share": vs,
                "n_principles": 2,
                "n_consistent": 2,
                "abstain_reason": r,
                "p_chosen": max(pa, 1 - pa),
                "confidence": abs(2 * pa - 1),
            }
            for pid, lab, pa, vs, r in rows
        ]
    )


def test_ensemble_all_and_majority() -> None:
    j1 = _frame(
        [("x", "A", 0.9, 1.0, None), ("y", "A", 0.8, 1.0, None), ("z", "abstain", 0.5, 0.5, "low_confidence")]
    )
    j2 = _frame([("x", "A", 0.7, 1.0, None), ("y", "B", 0.3, 1.0, None), ("z", "A", 0.8, 1.0, None)])
    j3 = _frame([("x", "B", 0.4, 0.5, None), ("y", "B", 0.2, 1.0, None), ("z", "A", 0.9, 1.0, None)])
    all_ = combine_judges([j1, j2], "all").set_index("pair_id")
    assert all_.loc["x", "label"] == "A" and all_.loc["x", "p_a"] == pytest.approx(0.8)
    assert all_.loc["y", "label"] == "abstain" and all_.loc["y", "abstain_reason"] == "disagreement"
    assert all_.loc["z", "label"] == "abstain" and all_.loc["z", "abstain_reason"] == "low_confidence"
    maj = combine_judges([j1, j2, j3], "majority").set_index("pair_id")
    assert maj["label"].tolist() == ["A", "B", "A"]
    assert maj.loc["y", "p_a"] == pytest.approx((0.8 + 0.3 + 0.2) / 3)
    assert maj.loc["x", "vote_share"] == pytest.approx(2.5 / 3)
    two = combine_judges([j1, j3], "majority").set_index("pair_id")
    assert two.loc["x", "abstain_reason"] == "disagreement"


def test_template_puts_principle_after_replies() -> None:
    t = get_template("pairwise-v1")
    msgs = t.render("User: hi", "first reply", "second reply", "Be kind.")
    user = msgs[-1]["content"]
    assert user.index("first reply") < user.index("second reply") < user.index("Be kind.")
    with pytest.raises(
        ValueError,
        match="unknown judge template 'nope'; known: pairwise-cot-v1, pairwise-plain-v1, pairwise-v1$",
    ):
        get_template("nope")
