"""Judge quality checks and the signal gate: exact values."""

import pandas as pd
import pytest

from alignment_dagster.judge.health import QualityThresholds, binomial_sf, judge_quality, signal_gate


def test_binomial_sf_exact() -> None:
    assert binomial_sf(0, 10) == 1.0
    assert binomial_sf(10, 10) == pytest.approx(1 / 1024)
    assert binomial_sf(8, 10) == pytest.approx((45 + 10 + 1) / 1024)
    assert binomial_sf(11, 10) == 0.0
    assert binomial_sf(600, 1000) == pytest.approx(1.364e-10, rel=0.01)


def test_gate_pass_fail_undecided() -> None:
    assert signal_gate(40, 50).verdict == "pass"
    fail = signal_gate(26, 50)
    assert fail.verdict == "fail" and fail.p_value == pytest.approx(binomial_sf(26, 50))
    assert "not significantly above chance" in fail.reason
    small = signal_gate(9, 10, min_n=30)
    assert small.verdict == "undecided" and "30 needed" in small.reason
    assert signal_gate(0, 0).verdict == "undecided"


def test_quality_checks_catch_a_position_biased_judge() -> None:
    # Always prefers the first slot: p_first = 0.9 in both orders.
    principles = pd.DataFrame({"p_a_forward": [0.9] * 4, "p_a_backward": [0.1] * 4, "order_consistent": [False] * 4})
    pairs = pd.DataFrame({"label": ["abstain"] * 4})
    out = {c.name: c for c in judge_quality(principles, pairs, QualityThresholds())}
    assert out["position_consistency"].value == 0.0 and not out["position_consistency"].passed
    assert out["first_position_win_rate"].value == 1.0
    assert out["abstention_rate"].value == 1.0 and not out["abstention_rate"].passed
    assert not out["label_balance"].passed

    healthy = pd.DataFrame({"p_a_forward": [0.8, 0.3, 0.7, 0.2], "p_a_backward": [0.7, 0.2, 0.9, 0.4],
                            "order_consistent": [True, True, True, True]})
    labels = pd.DataFrame({"label": ["A", "B", "A", "B", "abstain"]})
    out = {c.name: c for c in judge_quality(healthy, labels, QualityThresholds())}
    assert all(c.passed for c in out.values())
    assert out["first_position_win_rate"].value == pytest.approx(4 / 8)
    assert out["abstention_rate"].value == pytest.approx(0.2)
    assert out["label_balance"].value == 0.5
