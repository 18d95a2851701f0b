"""Human label aggregation and inter-annotator agreement, with hand-computed values."""

from __future__ import annotations

import pandas as pd
import pytest

from alignment_dagster.human.agreement import (
    AGGREGATE_COLUMNS,
    aggregate_labels,
    cohen_kappa,
    fleiss_kappa,
    inter_annotator_agreement,
)
from alignment_dagster.human.labels import latest_per_annotator


def labels(rows: list[tuple]) -> pd.DataFrame:
    """rows of (pair_id, choice, annotator[, labelled_at])."""
    out = []
    for i, r in enumerate(rows):
        t = r[3] if len(r) > 3 else f"2025-01-01T00:00:{i:02d}Z"
        out.append(
            {
                "pair_id": r[0],
                "choice": r[1],
                "annotator": r[2],
                "labelled_at": t,
                "backend": "file_queue",
                "comment": None,
            }
        )
    return pd.DataFrame(out)


def test_aggregate_majority_ties_and_agreement():
    df = labels(
        [
            ("p1", "A", "u1"),
            ("p1", "A", "u2"),
            ("p1", "B", "u3"),  # A 2-1
            ("p2", "A", "u1"),
            ("p2", "B", "u2"),  # A-B split -> tie
            ("p3", "tie", "u1"),
            ("p3", "tie", "u2"),
            ("p3", "A", "u3"),  # humans say tie
            ("p4", "A", "u1"),
            ("p4", "tie", "u2"),  # A-tie split -> tie
            ("p5", "B", "u9"),  # one annotator
        ]
    )
    out = aggregate_labels(df)
    assert list(out.columns) == AGGREGATE_COLUMNS
    assert [tuple(r) for r in out.itertuples(index=False)] == [
        ("p1", "A", 3, 2 / 3, 2, 1, 0),
        ("p2", "tie", 2, 0.5, 1, 1, 0),
        ("p3", "tie", 3, 2 / 3, 1, 0, 2),
        ("p4", "tie", 2, 0.5, 1, 0, 1),
        ("p5", "B", 1, 1.0, 0, 1, 0),
    ]


def test_an_annotator_gets_one_vote_per_pair_their_latest():
    df = labels(
        [
            ("p1", "A", "u1", "2025-01-02T00:00:00Z"),
            ("p1", "B", "u1", "2025-01-01T00:00:00Z"),  # older, although later in the frame
            ("p1", "B", "u2", "2025-01-01T00:00:00+00:00"),
            ("p1", "tie", "u2", "2025-01-01T00:00:00Z"),  # same time: the later row wins
        ]
    )
    assert [tuple(r) for r in latest_per_annotator(df)[["choice", "annotator"]].itertuples(index=False)] == [
        ("A", "u1"),
        ("tie", "u2"),
    ]
    assert tuple(aggregate_labels(df).iloc[0]) == ("p1", "tie", 2, 0.5, 1, 0, 1)


def test_cohen_kappa_hand_computed():
    x = ["A", "A", "A", "A", "A", "B", "B", "B", "B", "tie"]
    y = ["A", "A", "A", "A", "B", "B", "B", "B", "A", "tie"]
    # p_o = 8/10; marginals A 5/5, B 4/4, tie 1/1 -> p_e = (25 + 16 + 1) / 100 = 0.42; kappa = 0.38 / 0.58
    assert cohen_kappa(x, y) == pytest.approx(19 / 29, abs=1e-12)
    assert cohen_kappa(["A", "B"], ["A", "B"]) == pytest.approx(1.0)
    assert cohen_kappa(["A", "B"], ["B", "A"]) == pytest.approx(-1.0)
    assert cohen_kappa(["A", "A"], ["A", "A"]) is None  # p_e = 1: undefined
    assert cohen_kappa([], []) is None
    with pytest.raises(ValueError, match="2 labels against 1"):
        cohen_kappa(["A", "B"], ["A"])


def test_fleiss_kappa_hand_computed():
    # P_i: 1, (4+1-3)/6 = 1/3, 0 -> P-bar 4/9; totals A 6, B 2, tie 1 of 9 -> P_e = 41/81
    # kappa = (36/81 - 41/81) / (40/81) = -1/8
    counts = [{"A": 3}, {"A": 2, "B": 1}, {"A": 1, "B": 1, "tie": 1}]
    assert fleiss_kappa(counts) == pytest.approx(-0.125, abs=1e-12)
    assert fleiss_kappa([{"A": 2}, {"B": 2}]) == pytest.approx(1.0)
    assert fleiss_kappa([{"A": 1}]) is None


def test_inter_annotator_agreement_three_annotators():
    df = labels(
        [
            ("p1", "A", "u1"),
            ("p1", "A", "u2"),
            ("p1", "A", "u3"),
            ("p2", "A", "u1"),
            ("p2", "A", "u2"),
            ("p2", "B", "u3"),
            ("p3", "A", "u1"),
            ("p3", "B", "u2"),
            ("p3", "tie", "u3"),
            ("p4", "B", "u1"),  # single annotator: not part of agreement
        ]
    )
    r = inter_annotator_agreement(df)
    assert (r.n_items, r.n_annotators, r.n_rating_pairs) == (3, 3, 9)
    assert r.percent_agreement == pytest.approx(4 / 9)
    assert r.fleiss_kappa == pytest.approx(-0.125)
    assert r.cohen_kappa is None


def test_inter_annotator_agreement_two_annotators_gives_cohen():
    x = ["A", "A", "A", "A", "A", "B", "B", "B", "B", "tie"]
    y = ["A", "A", "A", "A", "B", "B", "B", "B", "A", "tie"]
    df = labels(
        [(f"p{i}", c, "ann") for i, c in enumerate(x)] + [(f"p{i}", c, "bob") for i, c in enumerate(y)]
    )
    r = inter_annotator_agreement(df)
    assert (r.n_items, r.n_annotators, r.n_rating_pairs) == (10, 2, 10)
    assert r.percent_agreement == pytest.approx(0.8)
    assert r.cohen_kappa == pytest.approx(19 / 29)
    # Fleiss with 2 raters: P-bar 0.8; pooled A 10, B 8, tie 2 of 20 -> P_e = 0.25+0.16+0.01 = 0.42
    assert r.fleiss_kappa == pytest.approx((0.8 - 0.42) / 0.58)


def test_no_multi_rated_items_and_bad_choices():
    assert inter_annotator_agreement(labels([("p1", "A", "u1")])).as_dict() == {
        "n_items": 0,
        "n_annotators": 0,
        "n_rating_pairs": 0,
        "percent_agreement": None,
        "fleiss_kappa": None,
        "cohen_kappa": None,
    }
    with pytest.raises(ValueError, match="choice 'C' is not one of A, B, tie"):
        aggregate_labels(labels([("p1", "C", "u1")]))
    empty = aggregate_labels(labels([]).reindex(columns=["pair_id", "choice", "annotator", "labelled_at"]))
    assert list(empty.columns) == AGGREGATE_COLUMNS and empty.empty
