"""preference_dataset's refusals as a plain function: a judge with signal (it passes the signal gate) that
over-picks the longer reply is refused for AI-sourced blends only where the constitution makes the
length-bias check block, never for human-only blends, and not under an override."""

import pandas as pd

from alignment_dagster.specs.blend import parse_blend
from alignment_dagster.specs.constitution import parse_constitution
from alignment_dagster.training.preference_data import build_preference_dataset
from tests.conftest import REPO

N = 60
BASE = "name: lengthy\nprinciples:\n  - {id: harm, text: Choose the less harmful reply.}\n"


def inputs():
    """60 pairs, the longer reply in A for even i; humans pick the longer on half; the judge agrees with every
    human "longer" and with 10 of the 30 "shorter": 40/60 agreement (a judge with signal), longer on 50."""
    rows, known, prefs = [], [], []
    for i in range(N):
        long, short = "word " * 30, "word " * 10
        a, b = (long, short) if i % 2 == 0 else (short, long)
        longer, shorter = ("A", "B") if i % 2 == 0 else ("B", "A")
        human = longer if i % 4 in (0, 1) else shorter
        judge = human if human == longer or i < 20 else longer
        pid = f"p{i:02d}"
        rows.append(
            {"pair_id": pid, "prompt_id": f"q{i}", "prompt": f"prompt {i}", "response_a": a, "response_b": b}
        )
        known.append({"pair_id": pid, "label": human, "source_dataset": "test"})
        p_a = 0.9 if judge == "A" else 0.1
        prefs.append({"pair_id": pid, "label": judge, "p_a": p_a, "p_chosen": 0.9, "confidence": 0.8})
    return pd.DataFrame(rows), pd.DataFrame(prefs).assign(abstain_reason=None), pd.DataFrame(known)


def build(constitution_extra: str, blend: str):
    pairs, prefs, known = inputs()
    spec = parse_constitution(BASE + constitution_extra, "lengthy.yaml")
    b = parse_blend((REPO / "blends" / f"{blend}.yaml").read_text(), f"{blend}.yaml")
    return build_preference_dataset(
        pairs, prefs, pd.DataFrame(), pd.DataFrame(), known, spec, b, f"{blend}.yaml"
    )


def test_length_bias_blocks_ai_blends_only_where_the_constitution_says_so() -> None:
    warn_only = build("", "ai-only")
    assert warn_only.gate.verdict == "pass" and warn_only.length.verdict == "fail"
    # Blended, not refused: every pair here is a held-out known pair (it measures the judge, never trains).
    assert not warn_only.blocked and warn_only.result.dropped["heldout"] == N
    tags = warn_only.report().tags
    assert tags["length_bias.verdict"] == "fail" and tags["length_bias.blocks"] == "false"

    blocking = "judge:\n  length_bias: {block_ai_labels: true}\n"
    refused = build(blocking, "ai-only")
    assert refused.blocked and refused.gate.verdict == "pass"
    text = refused.refusal()
    assert text.startswith("blend 'ai-only' uses AI labels, blocked by the judge length-bias check: ")
    assert "longer reply on 0.833 of n=60 pairs, humans on 0.500" in text
    report = refused.report()
    assert report.tags["judge_gate.blocked"] == "true" and report.tags["length_bias.blocks"] == "true"
    assert report.metrics["length_bias.excess"] == 50 / 60 - 0.5

    assert not build(blocking, "human-only").blocked
    overridden = build(blocking + "  gate: {override: judged by hand for this pilot}\n", "ai-only")
    assert not overridden.blocked and overridden.length.verdict == "fail"
