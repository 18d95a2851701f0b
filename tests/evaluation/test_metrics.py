"""Eval statistics with exact expected values."""

import pandas as pd
import pytest

from alignment_dagster.evaluation.metrics import (
    Prices,
    estimated_cost,
    is_refusal,
    length_stats,
    outcome,
    refusal_rate,
    wilson_interval,
    win_rate,
    win_rates_by,
)


def test_wilson_interval_known_values() -> None:
    # By hand: centre = (0.8 + 0.19208)/1.38416 = 0.716738, half = 1.96*sqrt(0.025604)/1.38416 = 0.226581
    lo, hi = wilson_interval(8, 10, z=1.96)
    assert lo == pytest.approx(0.490157, abs=1e-6) and hi == pytest.approx(0.943319, abs=1e-6)
    assert wilson_interval(0, 20, z=1.96) == (0.0, pytest.approx(0.161130, abs=1e-6))
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(50, 100, z=1.96)
    assert (lo + hi) / 2 == pytest.approx(0.5) and hi - lo == pytest.approx(2 * 0.0958, abs=1e-3)


def test_win_rate_aggregation() -> None:
    labels = ["A", "B", "abstain", "A", "A", "B"]
    slots = ["A", "A", "A", "B", "A", "B"]
    outs = [outcome(label, slot) for label, slot in zip(labels, slots, strict=True)]
    assert outs == ["win", "loss", "tie", "loss", "win", "win"]
    wr = win_rate(outs)
    assert (wr.n, wr.wins, wr.ties, wr.losses) == (6, 3, 1, 2)
    assert wr.win_rate == 0.5 and wr.tie_rate == pytest.approx(1 / 6) and wr.score == pytest.approx(3.5 / 6)
    with pytest.raises(ValueError, match="win/tie/loss"):
        win_rate(["win", "draw"])
    df = pd.DataFrame(
        {"category": ["x", "x", "y", "y", "y"], "outcome": ["win", "loss", "win", "win", "tie"]}
    )
    by = win_rates_by(df, "category").set_index("category")
    assert by.loc["x", "win_rate"] == 0.5 and by.loc["y", "win_rate"] == pytest.approx(2 / 3)
    assert by.loc["y", "n"] == 3 and by.loc["y", "tie_rate"] == pytest.approx(1 / 3)


def test_refusals_and_lengths() -> None:
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("As an AI, I cannot do this.")
    assert is_refusal("I won't provide instructions for that.")
    assert not is_refusal("Sure! Here is how you bake bread: ...")
    assert not is_refusal("x" * 300 + " I cannot")  # only the opening counts
    assert refusal_rate(["I cannot do that.", "Here you go.", "I am unable to help.", "Yes."]) == 0.5
    assert length_stats(["ab", "abcd", "abcdef"]) == {"mean": 4.0, "p50": 4.0, "p90": pytest.approx(5.6)}


def test_cost() -> None:
    prices = Prices(
        per_1k_prompt_tokens=0.5, per_1k_generated_tokens=1.5, per_accelerator_hour=2.0, per_human_label=0.25
    )
    assert estimated_cost(2000, 1000, 1800, 10, prices) == pytest.approx(1.0 + 1.5 + 1.0 + 2.5)
