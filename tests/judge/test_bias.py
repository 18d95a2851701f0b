"""Judge biases beyond position, with exact expected values: length bias against humans on the same pairs
(a judge that always picks the longer reply fails, one that matches the humans passes), self-preference,
the effective size of an ensemble, and length debiasing kept only when it helps on held-out pairs."""

import math

import numpy as np
import pandas as pd
import pytest

from alignment_dagster.judge.bias import (
    effective_judges,
    ensemble_size,
    judge_relation,
    length_bias_for_version,
    length_debias,
    longer_reply,
    member_votes,
    model_family,
    model_name,
    paired_excess,
    reply_lengths,
    self_preference,
)
from alignment_dagster.judge.gate import binomial_sf
from alignment_dagster.specs.constitution import LengthBiasSettings

N = 60


def test_longer_reply_leaves_near_equal_lengths_out() -> None:
    assert longer_reply(100, 95) is None  # within 10% of the longer reply
    assert longer_reply(10, 13) is None  # within 3 tokens
    assert longer_reply(10, 14) == "B" and longer_reply(200, 150) == "A"
    assert longer_reply(100, 95, min_fraction=0.0, min_tokens=0) == "A"


def test_paired_excess_is_the_one_sided_exact_mcnemar_test() -> None:
    t = paired_excess([True, True, True, True, False], [True, False, False, False, False])
    assert (t.n, t.judge_only, t.reference_only, t.judge_rate, t.reference_rate) == (5, 3, 0, 0.8, 0.2)
    assert t.p_value == pytest.approx(1 / 8) and t.excess == pytest.approx(0.6)
    assert paired_excess([True, False], [True, False]).p_value == 1.0  # no discordant pair: no evidence
    assert paired_excess([True] * 10 + [False], [False] * 10 + [True]).p_value == binomial_sf(10, 11)


def reply_pairs() -> pd.DataFrame:
    """N pairs, the longer reply in A for even i and in B for odd i (30 words against 10), plus 4 pairs of
    near-equal lengths."""
    rows = []
    for i in range(N + 4):
        long, short = "word " * 30, "word " * 10
        a, b = (long, short) if i % 2 == 0 else (short, long)
        if i >= N:
            a, b = "word " * 30, "word " * 29
        rows.append({"pair_id": f"p{i:02d}", "response_a": a, "response_b": b})
    return pd.DataFrame(rows)


def human_choice(i: int) -> str:
    # Humans prefer the longer reply on half the pairs: i % 4 in (0, 1) -> longer.
    longer = "A" if i % 2 == 0 else "B"
    return longer if i % 4 in (0, 1) else ("B" if longer == "A" else "A")


def prefs_of(choices: dict[str, str], pairs: pd.DataFrame, **extra) -> pd.DataFrame:
    lengths, unit = reply_lengths(pairs)
    p_a = [0.8 if choices[pid] == "A" else 0.2 for pid in pairs["pair_id"]]
    frame = pd.DataFrame({"pair_id": pairs["pair_id"], "p_a": p_a, "abstain_reason": None, **extra})
    return frame.merge(lengths, on="pair_id").assign(length_unit=unit)


def check(prefs, known, pairs, settings=None, **kw):
    return length_bias_for_version(
        prefs, pd.DataFrame(), pd.DataFrame(), known, pairs, settings or LengthBiasSettings(), **kw
    )


def test_length_bias_fails_for_a_judge_that_always_picks_the_longer_reply() -> None:
    pairs = reply_pairs()
    ids = list(pairs["pair_id"])
    known = pd.DataFrame({"pair_id": ids, "label": [human_choice(i) for i in range(N + 4)]})
    longer = {pid: ("A" if i % 2 == 0 or i >= N else "B") for i, pid in enumerate(ids)}
    report = check(prefs_of(longer, pairs), known, pairs)
    t = report.test
    assert report.verdict == "fail" and report.unit == "whitespace tokens"
    assert (t.n, t.judge_rate, t.reference_rate, t.judge_only, t.reference_only) == (N, 1.0, 0.5, 30, 0)
    assert t.p_value == pytest.approx(0.5**30) and report.left_out == {"near_equal": 4, "trained_on": 0}
    assert report.n_known == N + 4 and report.n_references == N + 4
    assert "excess +0.500" in report.reason and not report.blocks_ai_labels  # WARN by default: no block
    blocking = check(prefs_of(longer, pairs), known, pairs, LengthBiasSettings(block_ai_labels=True))
    assert blocking.blocks_ai_labels and "AI-sourced blends are blocked" in blocking.reason
    overridden = check(
        prefs_of(longer, pairs), known, pairs, LengthBiasSettings(block_ai_labels=True), override="ok"
    )
    assert overridden.verdict == "fail" and not overridden.blocks_ai_labels
    # Significant but within the configured threshold: passes.
    assert check(prefs_of(longer, pairs), known, pairs, LengthBiasSettings(max_excess=0.5)).verdict == "pass"


def test_length_bias_passes_for_a_judge_that_matches_the_humans_and_needs_enough_pairs() -> None:
    pairs = reply_pairs()
    known = pd.DataFrame({"pair_id": pairs["pair_id"], "label": [human_choice(i) for i in range(N + 4)]})
    matching = dict(zip(known["pair_id"], known["label"], strict=True))
    report = check(prefs_of(matching, pairs), known, pairs)
    assert report.verdict == "pass" and report.test.excess == 0.0 and report.test.p_value == 1.0
    few = check(prefs_of(matching, pairs), known.head(20), pairs)
    assert few.verdict == "undecided" and few.test.n == 20 and "30 needed" in few.reason
    # A preference-model judge on held-out pairs only: the pairs it trained on are left out and counted.
    prefs = prefs_of(matching, pairs)
    prefs.loc[:9, ["p_a", "abstain_reason"]] = [0.5, "trained_on"]
    held_out = check(prefs, known, pairs)
    assert held_out.left_out["trained_on"] == 10 and held_out.test.n == N - 10
    # Stored without lengths: whitespace tokens of the pairs.
    bare = check(prefs_of(matching, pairs).drop(columns=["len_a", "len_b", "length_unit"]), known, pairs)
    assert bare.test == report.test and bare.unit == "whitespace tokens"


def test_audit_slice_references_and_no_lean() -> None:
    pairs = reply_pairs().head(4)
    human = pd.DataFrame(
        {"pair_id": ["p00", "p01", "p02"], "choice": ["A", "A", "B"], "annotator": ["h1"] * 3}
    ).assign(labelled_at="2025-01-01T00:00:00+00:00", backend="file_queue", comment=None)
    edge = pd.DataFrame({"pair_id": ["p00", "p01", "p02", "p03"], "audit": [True, True, True, False]})
    prefs = prefs_of({"p00": "A", "p01": "B", "p02": "A", "p03": "B"}, pairs)
    prefs.loc[2, "p_a"] = 0.5
    r = length_bias_for_version(prefs, edge, human, pd.DataFrame(), pairs, LengthBiasSettings(min_n=1))
    assert r.n_audit == 3 and r.left_out["no_lean"] == 1 and r.test.n == 2
    # p00: both pick the longer A; p01: the judge picks the longer B, the human the shorter A.
    assert (r.test.judge_only, r.test.reference_only, r.test.judge_rate, r.test.reference_rate) == (
        1,
        0,
        1.0,
        0.5,
    )


def test_reply_lengths_use_the_tokenizer_when_there_is_one() -> None:
    pairs = pd.DataFrame({"pair_id": ["x"], "response_a": ["a b c"], "response_b": ["abcdef"]})
    lengths, unit = reply_lengths(pairs, lambda texts: [len(t) for t in texts], "SmolLM2 tokens")
    assert unit == "SmolLM2 tokens" and lengths.iloc[0].tolist() == ["x", 5, 6]
    lengths, unit = reply_lengths(pairs, lambda texts: None)  # a backend without a tokenizer at hand
    assert unit == "whitespace tokens" and lengths.iloc[0].tolist() == ["x", 3, 1]


def test_self_preference_relation_and_measurement() -> None:
    policy = "transformers:SmolLM2-135M-Instruct@0123abcd+lora@99aa"
    assert model_name(policy) == "smollm2-135m-instruct" and model_family(policy) == "smollm"
    assert judge_relation("transformers:SmolLM2-135M-Instruct@0123abcd", policy) == "same model"
    assert judge_relation("transformers:HuggingFaceTB/SmolLM2-360M-Instruct@hub", policy) == "same family"
    assert judge_relation("openai:gpt-4o-mini@https://api.example.com/v1", policy) == "other family"
    assert model_family("openai:Qwen/Qwen2.5-7B-Instruct@http://127.0.0.1:8000/v1") == "qwen"

    missing = self_preference("same model")
    assert missing.status == "not measured" and missing.reason.startswith("not measured: no reference")
    assert missing.metrics() == {"self_preference.same_family": 1.0}
    assert missing.tags()["judge.self_preference"] == "same model"
    sp = self_preference(
        "same model", [0.9, 0.8, 0.7, 0.4, 0.5], [0.6, 0.3, 0.2, 0.45, 0.9], reference="MiniLM RM"
    )
    t = sp.test
    assert sp.status == "measured" and sp.left_out == 1 and t.n == 4
    assert (t.judge_rate, t.reference_rate, t.judge_only, t.reference_only, t.p_value) == (
        0.75,
        0.25,
        2,
        0,
        0.25,
    )
    assert sp.metrics()["self_preference.excess"] == 0.5 and "MiniLM RM" in sp.reason


def test_effective_number_of_judges() -> None:
    assert effective_judges(3, 0.5) == 1.5 and effective_judges(4, 0.0) == 4.0
    assert effective_judges(5, 1.0) == 1.0 and effective_judges(3, -0.2) == 3.0  # clipped at 0
    assert math.isnan(effective_judges(2, float("nan")))
    same = ensemble_size(pd.DataFrame({"t1": [0.1, 0.4, 0.9], "t2": [0.1, 0.4, 0.9], "t3": [0.1, 0.4, 0.9]}))
    assert (same.n_judges, same.n_pairs) == (3, 3) and same.mean_correlation == pytest.approx(1.0)
    assert same.effective_judges == pytest.approx(1.0)
    # r(t1, t2) = 1, r(t1, t3) = r(t2, t3) = 0: mean 1/3, n_eff = 3 / (1 + 2/3) = 1.8.
    mixed = ensemble_size(
        pd.DataFrame({"t1": [0.1, 0.9, 0.1, 0.9], "t2": [0.2, 0.8, 0.2, 0.8], "t3": [0.3, 0.3, 0.7, 0.7]})
    )
    assert mixed.mean_correlation == pytest.approx(1 / 3) and mixed.effective_judges == pytest.approx(1.8)
    # A member that never varies correlates with nothing; rows with a missing vote are dropped.
    flat = ensemble_size(pd.DataFrame({"t1": [0.5, 0.5, 0.5, 0.2], "pm": [0.1, 0.2, 0.3, None]}))
    assert flat.n_pairs == 3 and math.isnan(flat.mean_correlation)

    principles = pd.DataFrame(
        {
            "pair_id": ["p1", "p1", "p1", "p1"],
            "principle_id": ["harm", "help", "harm", "help"],
            "weight": [2.0, 1.0, 2.0, 1.0],
            "p_a": [0.9, 0.3, 0.6, 0.6],
            "template_version": ["t1", "t1", "t2", "t2"],
        }
    )
    votes = member_votes(principles, {"pm": pd.Series({"p1": 0.25})})
    assert votes.loc["p1"].to_dict() == {"t1": pytest.approx(0.7), "t2": pytest.approx(0.6), "pm": 0.25}


def synthetic_judged(n: int, judge_length_weight: float, human_shorter: float, seed: int = 0):
    """Pairs whose human label prefers the shorter reply with probability `human_shorter`; the judge sees a
    noisy copy of the human's side plus `judge_length_weight` times the length feature."""
    rng = np.random.default_rng(seed)
    len_a, len_b = rng.integers(20, 200, n), rng.integers(20, 200, n)
    shorter = np.where(len_a < len_b, "A", "B")
    flip = rng.random(n) >= human_shorter
    human = np.where(flip, np.where(shorter == "A", "B", "A"), shorter)
    signal = np.where(human == "A", 0.3, -0.3) + rng.normal(0, 1.0, n)
    z = signal + judge_length_weight * np.tanh((len_a - len_b) / np.std(len_a - len_b))
    return 1 / (1 + np.exp(-z)), len_a, len_b, list(human)


def test_length_debias_is_kept_only_when_it_raises_held_out_agreement() -> None:
    biased = length_debias(*synthetic_judged(400, judge_length_weight=3.0, human_shorter=0.7))
    assert biased.kept and biased.agreement_after > biased.agreement_before + 0.1
    assert biased.length_weight < 0 and biased.p_value < 0.05 and "raised held-out agreement" in biased.reason
    fair = length_debias(*synthetic_judged(400, judge_length_weight=0.0, human_shorter=0.5, seed=1))
    assert not fair.kept and "did not measurably raise" in fair.reason
    assert fair.n == 400 and fair.gained + fair.lost <= 400
