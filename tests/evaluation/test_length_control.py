"""The length-controlled win rate with exact expected values on textbook cases."""

import math

import numpy as np
import pytest

from alignment_dagster.evaluation.length_control import (
    fit_logistic,
    length_controlled_win_rate,
    length_feature,
)

# 20 prompts: on 10 the policy's reply is 20 tokens longer and wins 9, on 10 it is 20 shorter and wins 5.
OUTCOMES = ["win"] * 9 + ["loss"] + ["win"] * 5 + ["loss"] * 5
POLICY = [120] * 10 + [80] * 10
BASE = [100] * 20


def test_fit_at_equal_length_is_the_mean_log_odds_of_the_two_groups() -> None:
    # Symmetric lengths: b0 = (logit 0.9 + logit 0.5) / 2 = ln 3, so the win rate at equal length is 3/4.
    feature = length_feature(np.array(POLICY, dtype=float) - np.array(BASE))
    assert feature is not None and set(np.round(feature, 6)) == {round(math.tanh(math.sqrt(19 / 20)), 6)} | {
        round(-math.tanh(math.sqrt(19 / 20)), 6)
    }
    targets = np.array([1.0 if o == "win" else 0.0 for o in OUTCOMES])
    b0, b1 = fit_logistic(np.column_stack([np.ones(20), feature]), targets)
    assert b0 == pytest.approx(math.log(3), abs=1e-9)
    assert b1 == pytest.approx(math.log(9) / 2 / math.tanh(math.sqrt(19 / 20)), abs=1e-9)


def test_length_controlled_win_rate_beside_the_raw_one() -> None:
    lc = length_controlled_win_rate(OUTCOMES, POLICY, BASE)
    assert lc.raw == 0.7 and lc.win_rate == pytest.approx(0.75, abs=1e-3)  # the slope's weak penalty
    assert lc.slope > 0 and lc.ci[0] < lc.win_rate < lc.ci[1]
    m = lc.metrics()
    assert (m["judge.lc_n"], m["judge.lc_raw_score"]) == (20, 0.7) and m["judge.lc_win_rate"] == lc.win_rate

    # Outcomes that do not depend on length: the controlled rate is the raw one.
    even = ["win"] * 6 + ["loss"] * 4 + ["win"] * 6 + ["loss"] * 4
    flat = length_controlled_win_rate(even, POLICY, BASE)
    assert flat.win_rate == pytest.approx(0.6, abs=1e-9) and flat.slope == pytest.approx(0.0, abs=1e-9)
    # Ties count half; equal lengths everywhere need no control.
    ties = length_controlled_win_rate(["tie"] * 10 + ["win"] * 10, [50] * 20, [50] * 20)
    assert (ties.raw, ties.win_rate, ties.slope) == (0.75, 0.75, 0.0)


def test_a_policy_that_only_grew_longer_wins_raw_not_length_controlled() -> None:
    # The policy wins exactly where it is longer (15 of 20): raw 0.75, at equal length far less.
    lc = length_controlled_win_rate(["win"] * 15 + ["loss"] * 5, [150] * 15 + [50] * 5, [100] * 20)
    assert lc.raw == 0.75 and lc.win_rate < 0.65 and lc.slope > 3


def test_n_a_below_the_stated_number_of_prompts_and_bad_input() -> None:
    small = length_controlled_win_rate(OUTCOMES[:19], POLICY[:19], BASE[:19])
    assert small.win_rate is None and small.ci is None and small.reason == "n/a: 19 prompts, 20 needed"
    assert math.isnan(small.metrics()["judge.lc_win_rate"]) and small.raw == pytest.approx(14 / 19)
    same_gap = length_controlled_win_rate(OUTCOMES, [110] * 20, BASE)
    assert same_gap.win_rate is None and "same length" in same_gap.reason
    with pytest.raises(ValueError, match="win/tie/loss"):
        length_controlled_win_rate(["won"], [1], [1], min_n=1)
    with pytest.raises(ValueError, match="2 outcomes, 1 policy"):
        length_controlled_win_rate(["win", "tie"], [1], [1, 2])
