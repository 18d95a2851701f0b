"""Quality checks on one judging run: a position-biased judge is caught."""

import pandas as pd
import pytest

from alignment_dagster.judge.quality import QualityThresholds, judge_quality


def test_quality_checks_catch_a_position_biased_judge() -> None:
    # Always prefers the first slot: p_first = 0.9 in both orders.
    principles = pd.DataFrame(
        {"p_a_forward": [0.9] * 4, "p_a_backward": [0.1] * 4, "order_consistent": [False] * 4}
    )
    pairs = pd.DataFrame({"label": ["abstain"] * 4})
    out = {c.name: c for c in judge_quality(principles, pairs, QualityThresholds())}
    assert out["position_consistency"].value == 0.0 and not out["position_consistency"].passed
    assert out["first_position_win_rate"].value == 1.0
    assert out["abstention_rate"].value == 1.0 and not out["abstention_rate"].passed
    assert not out["label_balance"].passed

    healthy = pd.DataFrame(
        {
            "p_a_forward": [0.8, 0.3, 0.7, 0.2],
            "p_a_backward": [0.7, 0.2, 0.9, 0.4],
            "order_consistent": [True, True, True, True],
        }
    )
    labels = pd.DataFrame({"label": ["A", "B", "A", "B", "abstain"]})
    out = {c.name: c for c in judge_quality(healthy, labels, QualityThresholds())}
    assert all(c.passed for c in out.values())
    assert out["first_position_win_rate"].value == pytest.approx(4 / 8)
    assert out["abstention_rate"].value == pytest.approx(0.2)
    assert out["label_balance"].value == 0.5
