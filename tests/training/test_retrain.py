"""The retrain policy on exact row sets, and the row digests it compares."""

import pandas as pd
import pytest

from alignment_dagster.specs.blend import RetrainPolicy
from alignment_dagster.training.fingerprints import row_digests
from alignment_dagster.training.retrain import retrain_decision

POLICY = RetrainPolicy(min_new_rows=4, min_new_share=0.1)
ROWS = [f"r{i}" for i in range(40)]
CARD = {"trained": True, "train_row_digests": ROWS}


@pytest.mark.parametrize(
    ("rows", "card", "force", "retrain", "new", "reason"),
    [
        (ROWS, None, False, True, 40, "no trained model yet"),
        (ROWS, {"trained": False, "skip_reason": "too few rows"}, False, True, 40, "no trained model yet"),
        (ROWS, CARD, False, False, 0, "0 new or changed rows (0% of 40): below the blend's retrain policy"),
        (ROWS + ["n1", "n2", "n3"], CARD, False, False, 3, "3 new or changed rows (8% of 40): below"),
        # 4 rows, but 4/40 = 10%: both thresholds met.
        (ROWS + ["n1", "n2", "n3", "n4"], CARD, False, True, 4, "4 new or changed rows (10% of 40)"),
        (ROWS, CARD, True, True, 0, "forced (0 new or changed rows)"),
        (ROWS, {"trained": True}, False, True, 40, "the current model records no training rows"),
    ],
)
def test_retrain_decision(rows, card, force, retrain, new, reason) -> None:
    decision = retrain_decision(rows, card, POLICY, force)
    assert (decision.retrain, decision.new_rows) == (retrain, new)
    assert decision.reason.startswith(reason)


def test_share_threshold_alone_keeps_the_model() -> None:
    many = [f"r{i}" for i in range(400)]
    decision = retrain_decision(
        many + [f"n{i}" for i in range(10)], {"trained": True, "train_row_digests": many}, POLICY
    )
    assert not decision.retrain and "(2% of 400)" in decision.reason


def row(prompt: str, chosen: str, rejected: str, weight: float) -> dict:
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "weight": weight,
    }


def test_row_digests_change_with_the_side_and_the_weight_only() -> None:
    base = row("p", "a", "b", 1.0)
    same, flipped, reweighted = row("p", "a", "b", 1.0), row("p", "b", "a", 1.0), row("p", "a", "b", 2.0)
    digests = row_digests(pd.DataFrame([base, same, flipped, reweighted]))
    assert digests[0] == digests[1]
    assert len(set(digests)) == 3


def test_identical_training_is_unchanged_and_a_new_base_retrains() -> None:
    card = {**CARD, "fingerprint": "fp-1", "base_identity": "base+lora@sft-1"}
    same = retrain_decision(ROWS, card, POLICY, fingerprint="fp-1", base_identity="base+lora@sft-1")
    assert (same.retrain, same.unchanged) == (False, True) and same.reason.startswith("identical training")
    moved = retrain_decision(ROWS, card, POLICY, fingerprint="fp-2", base_identity="base+lora@sft-2")
    assert (moved.retrain, moved.unchanged, moved.new_rows) == (True, False, 0)
    assert moved.reason == "its base model changed (0 new or changed rows)"
    # Same base, other config: the rows decide, as before (kept, stale).
    kept = retrain_decision(ROWS, card, POLICY, fingerprint="fp-3", base_identity="base+lora@sft-1")
    assert (kept.retrain, kept.unchanged) == (False, False)
    assert retrain_decision(ROWS, card, POLICY, True, fingerprint="fp-1").retrain  # forced
