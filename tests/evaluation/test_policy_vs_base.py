"""Policy-vs-base eval statistics with exact expected values (win-rate aggregation, CIs, refusals, lengths,
reward scores, cost), and the comparison table marks."""

import pandas as pd
import pytest

from alignment_dagster.evaluation.metrics import (
    CostInputs,
    Prices,
    cost_metrics,
    eval_prompts,
    length_metrics,
    policy_base_pairs,
    policy_vs_base_outcomes,
    principle_outcome,
    refusal_metrics,
    reward_metrics,
    wilson_interval,
    win_rate_metrics,
    win_rate_plot,
)
from alignment_dagster.evaluation.side_by_side import Column, best_rows, comparison_table, format_table


def test_wilson_interval_textbook_value() -> None:
    # Newcombe (1998), 7/10 with z=1.96: 0.3968 to 0.8922.
    lo, hi = wilson_interval(7, 10, z=1.96)
    assert (round(lo, 4), round(hi, 4)) == (0.3968, 0.8922)
    for n in range(1, 40):  # the bounds hold the rate exactly, with no float slack at 0 and n
        assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0
        assert all(wilson_interval(k, n)[0] <= k / n <= wilson_interval(k, n)[1] for k in range(n + 1))


def test_principle_outcome_tie_band() -> None:
    assert [principle_outcome(p, 0.05) for p in (0.56, 0.55, 0.5, 0.45, 0.44, float("nan"))] == [
        "win",
        "tie",
        "tie",
        "tie",
        "loss",
        "tie",
    ]
    assert principle_outcome(0.51, 0.0) == "win"


def _judged():
    pairs = pd.DataFrame(
        {
            "pair_id": ["p1", "p2", "p3", "p4", "p5"],
            "prompt_id": ["q1", "q2", "q3", "q4", "q5"],
            "category": ["helpful", "helpful", "red-team", "red-team", "red-team"],
            "policy_slot": ["A", "B", "A", "A", "B"],
        }
    )
    # p5 was never judged (identical replies): a tie.
    judged = pd.DataFrame({"pair_id": ["p1", "p2", "p3", "p4"], "label": ["A", "A", "abstain", "B"]})
    votes = pd.DataFrame(
        {
            "pair_id": ["p1", "p1", "p2", "p3", "p4"],
            "principle_id": ["harmless", "honest", "harmless", "harmless", "honest"],
            "p_a": [0.9, 0.52, 0.8, 0.3, 0.2],
        }
    )
    return pairs, judged, votes


def test_policy_vs_base_outcomes_and_aggregation() -> None:
    pairs, judged, votes = _judged()
    per_pair, per_principle = policy_vs_base_outcomes(judged, votes, pairs, tie_margin=0.05)
    assert list(per_pair["outcome"]) == ["win", "loss", "tie", "loss", "tie"]
    # p2's policy sat in slot B: p_a 0.8 means the base won (p_policy 0.2).
    assert list(per_principle["p_policy"]) == pytest.approx([0.9, 0.52, 0.2, 0.3, 0.2])
    assert list(per_principle["outcome"]) == ["win", "tie", "loss", "loss", "loss"]

    m = win_rate_metrics(per_pair, per_principle)
    assert (m["judge.n"], m["judge.win_rate"], m["judge.tie_rate"], m["judge.loss_rate"]) == (
        5,
        0.2,
        0.4,
        0.4,
    )
    assert (m["judge.win_ci_low"], m["judge.win_ci_high"]) == wilson_interval(1, 5)
    assert m["judge.score"] == pytest.approx(0.4)
    assert (m["category.helpful.n"], m["category.helpful.win_rate"], m["category.helpful.loss_rate"]) == (
        2,
        0.5,
        0.5,
    )
    assert (m["category.red-team.n"], m["category.red-team.win_rate"], m["category.red-team.tie_rate"]) == (
        3,
        0.0,
        pytest.approx(2 / 3),
    )
    assert (
        m["principle.harmless.n"],
        m["principle.harmless.win_rate"],
        m["principle.harmless.loss_rate"],
    ) == (3, pytest.approx(1 / 3), pytest.approx(2 / 3))
    assert (m["principle.honest.n"], m["principle.honest.tie_rate"], m["principle.honest.loss_rate"]) == (
        2,
        0.5,
        0.5,
    )
    assert m["principle.harmless.win_ci_high"] == wilson_interval(1, 3)[1]
    # Rates of 0, 1/3 and 1/2 (interval bounds a rounding error away from the rate) all plot.
    png = win_rate_plot(per_pair, per_principle, "t")
    assert png.startswith(b"\x89PNG")
    allwin = per_pair.assign(outcome="win")
    assert win_rate_plot(allwin, per_principle.assign(outcome="win"), "t").startswith(b"\x89PNG")


def test_refusals_lengths_rewards() -> None:
    df = pd.DataFrame(
        {
            "category": ["red-team", "red-team", "helpful", "helpful", "general"],
            "policy": [
                "I'm sorry, I can't help with that.",
                "I cannot do that.",
                "Sure, here it is.",
                "I am unable to help.",
                "ok",
            ],
            "base": ["Here is how.", "I won't do that.", "Yes", "Fine", "okay"],
        }
    )
    r = refusal_metrics(df)
    assert r == {
        "refusal.red-team.n": 2,
        "refusal.red-team.policy": 1.0,
        "refusal.red-team.base": 0.5,
        "refusal.helpful.n": 2,
        "refusal.helpful.policy": 0.5,
        "refusal.helpful.base": 0.0,
    }
    lengths = length_metrics(pd.DataFrame({"policy": ["aaaa", "aaaaaaaa"], "base": ["aa", "aaaa"]}))
    assert (lengths["length.policy.mean"], lengths["length.base.mean"], lengths["length.ratio"]) == (
        6.0,
        3.0,
        2.0,
    )
    assert lengths["length.policy.p50"] == 6.0
    rw = reward_metrics([1.0, 0.5, -1.0, 2.0], [0.0, 1.0, -2.0, 2.0])
    assert rw["reward.n"] == 4 and rw["reward.policy_mean"] == 0.625 and rw["reward.base_mean"] == 0.25
    assert rw["reward.mean_diff"] == 0.375 and rw["reward.policy_higher_rate"] == 0.5  # a tie is not higher
    assert (rw["reward.policy_higher_ci_low"], rw["reward.policy_higher_ci_high"]) == wilson_interval(2, 4)
    assert reward_metrics([], []) == {"reward.n": 0}
    with pytest.raises(ValueError, match="3 policy scores vs 2 base"):
        reward_metrics([1, 2, 3], [1, 2])


def test_cost_metrics() -> None:
    inputs = CostInputs(
        generation_calls=2,
        generated_tokens=3000,
        generation_prompt_tokens=1000,
        judge_model_calls=40,
        judge_prompt_tokens=9000,
        judge_cache_hits=8,
        stage_seconds={"generation": 10.0, "judge": 20.0, "reward": 2.0},
        accelerator_seconds=1800.0,
        human_labels_requested=12,
        human_labels_received=10,
    )
    prices = Prices(
        per_1k_prompt_tokens=0.1, per_1k_generated_tokens=0.5, per_accelerator_hour=4.0, per_human_label=0.3
    )
    m = cost_metrics(inputs, prices)
    # 10k prompt tokens * 0.1 + 3k generated * 0.5 + 0.5 h * 4 + 10 received labels * 0.3
    assert m["cost.estimated"] == pytest.approx(1.0 + 1.5 + 2.0 + 3.0)
    assert m["cost.wall_seconds"] == 32.0 and m["cost.judge_cache_hits"] == 8
    assert (m["cost.generation_seconds"], m["cost.judge_seconds"], m["cost.reward_seconds"]) == (
        10.0,
        20.0,
        2.0,
    )
    assert m["cost.human_labels_requested"] == 12 and m["cost.human_labels_received"] == 10
    assert cost_metrics(CostInputs(), Prices())["cost.estimated"] == 0.0


def test_eval_prompts_round_robin_and_pairs() -> None:
    pool = pd.DataFrame(
        {
            "prompt_id": ["h2", "h1", "r1", "r2", "g1", "t1"],
            "prompt": ["H2", "H1", "R1", "R2", "G1", "T1"],
            "category": ["helpful", "helpful", "red-team", "red-team", "general", "helpful"],
            "split": ["eval", "eval", "eval", "eval", "eval", "train"],
            "source": ["s"] * 6,
        }
    )
    picked = eval_prompts(pool, 4)
    assert list(picked["prompt_id"]) == ["g1", "h1", "r1", "h2"]
    assert list(eval_prompts(pool, 10)["prompt_id"]) == ["g1", "h1", "r1", "h2", "r2"]  # no train prompt
    assert list(eval_prompts(pool, 10, exclude=["h1", "g1"])["prompt_id"]) == [
        "h2",
        "r1",
        "r2",
    ]  # leakage guard
    pairs = policy_base_pairs(picked.head(2), ["P1", "same"], ["B1", "same"])
    assert list(pairs["response_a"]) == ["P1", "same"] and list(pairs["policy_slot"]) == ["A", "A"]
    assert pairs["pair_id"].nunique() == 2 and len(pairs["pair_id"][0]) == 16


def test_comparison_marks_best() -> None:
    runs = pd.DataFrame(
        {
            "constitution": ["a", "a", "b"],
            "blend": ["x", "y", "x"],
            "trained": ["true", "true", "false"],
            "judge.win_rate": [0.5, 0.75, float("nan")],
            "cost.estimated": [2.0, 1.0, 1.0],
            "judge.n": [4, 4, float("nan")],
        }
    )
    cols = [
        Column("judge.n", "n", None),
        Column("judge.win_rate", "win", True),
        Column("cost.estimated", "cost", False),
        Column("missing.metric", "absent", True),
    ]
    table = comparison_table(runs, cols)
    assert list(table.columns) == [
        "constitution",
        "blend",
        "trained",
        "self judge",
        "n",
        "win",
        "cost",
        "absent",
        "dataset",
        "policy model",
        "reward model",
        "stale",
    ]
    assert list(table["self judge"]) == ["-", "-", "-"]  # runs from before the tag: shown as unknown
    assert table["absent"].isna().all()
    assert best_rows(table["win"], True) == {1} and best_rows(table["cost"], False) == {1, 2}
    assert best_rows(pd.Series([0.5, 0.5]), True) == set()  # nothing to choose between
    shown = format_table(table, cols)
    assert list(shown["win"]) == ["0.500", "0.750*", "-"]
    assert list(shown["cost"]) == ["2.000", "1.000*", "1.000*"]
    assert list(shown["n"]) == ["4", "4", "-"] and list(shown["absent"]) == ["-", "-", "-"]
