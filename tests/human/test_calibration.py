"""Judge-human agreement on an audit slice, with hand-computed agreement, kappa and reliability table."""

from __future__ import annotations

import io
import math

import pandas as pd
import pytest

from alignment_dagster.evaluation.metrics import wilson_interval
from alignment_dagster.human.calibration import RELIABILITY_COLUMNS, judge_human_agreement, reliability_plot

# pair_id, judge label, confidence, human annotations
CASES = [
    ("a1", "A", 0.10, ["A", "A"]),  # agree
    ("a2", "B", 0.15, ["A", "A", "B"]),  # human majority A: disagree
    ("a3", "A", 0.30, ["A"]),  # agree
    ("a4", "B", 0.35, ["B"]),  # agree
    ("a5", "A", 0.50, ["B"]),  # disagree
    ("a6", "B", 0.70, ["B"]),  # agree
    ("a7", "A", 0.90, ["A"]),  # agree
    ("a8", "A", 1.00, ["A"]),  # agree; confidence 1.0 falls in the last bucket
    ("a9", "A", 0.20, ["A", "B"]),  # human split -> tie: left out
    ("a10", "B", 0.45, []),  # no human label yet
    ("a11", "abstain", 0.05, ["A"]),  # judge abstained: left out
    ("b1", "A", 0.95, ["B"]),  # not in the audit slice
]
AUDIT = [c[0] for c in CASES if c[0].startswith("a")]


def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    prefs = pd.DataFrame(
        [{"pair_id": p, "label": lab, "confidence": c, "p_chosen": (1 + c) / 2} for p, lab, c, _ in CASES]
    )
    human = pd.DataFrame(
        [
            {
                "pair_id": p,
                "choice": ch,
                "annotator": f"u{i}",
                "labelled_at": "2025-01-01T00:00:00Z",
                "backend": "file_queue",
                "comment": None,
            }
            for p, _, _, hs in CASES
            for i, ch in enumerate(hs)
        ]
    )
    return prefs, human


def test_agreement_and_kappa_on_the_audit_slice():
    prefs, human = frames()
    r = judge_human_agreement(prefs, human, AUDIT)
    assert (r.n_pairs, r.n_with_human, r.n_human_tie, r.n_judge_abstain, r.n_compared) == (11, 10, 1, 1, 8)
    # a1..a8: 6 of 8 agree. Judge A/B = 5/3, human A/B = 5/3 -> p_e = (25 + 9) / 64; kappa = (0.75 - p_e)/(1 -
    # p_e)
    assert r.agreement == 0.75
    assert r.kappa == pytest.approx(7 / 15, abs=1e-12)
    assert r.agreement_ci == wilson_interval(6, 8)
    assert r.metrics()["kappa"] == r.kappa and r.metrics()["agreement_lo"] == wilson_interval(6, 8)[0]


def test_reliability_table_by_confidence_bucket():
    prefs, human = frames()
    t = judge_human_agreement(prefs, human, AUDIT).table
    assert list(t.columns) == RELIABILITY_COLUMNS
    got = [
        (r.bucket, r.n, r.n_agree, r.agreement, round(r.mean_confidence, 9), round(r.expected_agreement, 9))
        for r in t.itertuples()
    ]
    assert got == [
        ("[0, 0.2)", 2, 1, 0.5, 0.125, 0.5625),
        ("[0.2, 0.4)", 2, 2, 1.0, 0.325, 0.6625),
        ("[0.4, 0.6)", 1, 0, 0.0, 0.5, 0.75),
        ("[0.6, 0.8)", 1, 1, 1.0, 0.7, 0.85),
        ("[0.8, 1]", 2, 2, 1.0, 0.95, 0.975),
    ]
    assert (t.loc[0, "agreement_lo"], t.loc[0, "agreement_hi"]) == wilson_interval(1, 2)


def test_without_a_slice_every_judged_pair_counts_and_empty_buckets_are_listed():
    prefs, human = frames()
    r = judge_human_agreement(prefs, human, buckets=(0.0, 0.5, 0.99, 1.0))
    assert (r.n_pairs, r.n_compared, r.agreement) == (12, 9, 6 / 9)  # b1 (disagree) joins
    assert [(b, n) for b, n in zip(r.table["bucket"], r.table["n"], strict=True)] == [
        ("[0, 0.5)", 4),
        ("[0.5, 0.99)", 4),
        ("[0.99, 1]", 1),
    ]
    r0 = judge_human_agreement(prefs, human.iloc[:0], AUDIT)
    assert (r0.n_compared, r0.agreement, r0.kappa, r0.agreement_ci) == (0, None, None, None)
    assert list(r0.table["n"]) == [0] * 5 and math.isnan(r0.table.loc[0, "agreement"])


def test_one_choice_per_pair_input_and_errors():
    prefs, _ = frames()
    per_pair = pd.DataFrame({"pair_id": ["a1", "a2"], "choice": ["A", "A"]})
    r = judge_human_agreement(prefs, per_pair, ["a1", "a2"])
    assert (r.n_compared, r.agreement) == (2, 0.5)
    with pytest.raises(ValueError, match="no annotator column"):
        judge_human_agreement(prefs, pd.concat([per_pair, per_pair]))
    with pytest.raises(ValueError, match=r"audit pair\(s\) without an AI preference, e.g. 'zz'"):
        judge_human_agreement(prefs, per_pair, ["a1", "zz"])
    with pytest.raises(ValueError, match="bucket edges must be increasing"):
        judge_human_agreement(prefs, per_pair, buckets=(0.0, 0.5, 0.5, 1.0))


def test_reliability_plot_is_a_png():
    from matplotlib.image import imread

    prefs, human = frames()
    for table in (
        judge_human_agreement(prefs, human, AUDIT).table,
        judge_human_agreement(prefs, human.iloc[:0], AUDIT).table,
    ):
        png = reliability_plot(table)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert imread(io.BytesIO(png), format="png").shape == (450, 550, 4)
