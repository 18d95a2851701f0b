"""The retrain policy: does a changed preference dataset justify training a partition's model again?

Compares the rows training would use now with the rows the partition's current model was trained on (the
digests its card keeps). Below the blend's `retrain` thresholds the current model stays, marked stale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from alignment_dagster.specs.blend import RetrainPolicy


@dataclass(frozen=True)
class RetrainDecision:
    retrain: bool
    reason: str
    new_rows: int  # rows unlike any the current model trained on (new, relabelled or reweighted)
    trained_rows: int  # rows the current model was trained on (0: there is none)
    unchanged: bool = False  # training would be identical to the current model's: nothing to do


def retrain_decision(
    rows: Sequence[str],
    previous_card: dict | None,
    policy: RetrainPolicy,
    force: bool = False,
    *,
    fingerprint: str | None = None,
    base_identity: str | None = None,
) -> RetrainDecision:
    """Whether to train on `rows` (row digests of the new training split), given the card of the model the
    partition has now (None: no model yet). Training identical to the current model's (same `fingerprint`)
    leaves it as it is (`unchanged`, not stale: nothing to materialize); a new base model (`base_identity`,
    e.g. a retrained sft_policy that DPO starts from) always retrains."""
    if previous_card is None or not previous_card.get("trained"):
        return RetrainDecision(True, "no trained model yet", len(rows), 0)
    before = set(previous_card.get("train_row_digests") or [])
    new = len(set(rows) - before)
    trained = len(before)
    if force:
        return RetrainDecision(True, f"forced ({new} new or changed rows)", new, trained)
    if fingerprint is not None and previous_card.get("fingerprint") == fingerprint:
        return RetrainDecision(
            False, "identical training (rows, config, base): model unchanged", 0, trained, unchanged=True
        )
    if base_identity is not None and previous_card.get("base_identity") not in (None, base_identity):
        return RetrainDecision(True, f"its base model changed ({new} new or changed rows)", new, trained)
    if not before:  # a card from before row digests were kept: nothing to compare with
        return RetrainDecision(True, "the current model records no training rows", new, trained)
    share = new / trained
    if new >= policy.min_new_rows and share >= policy.min_new_share:
        return RetrainDecision(True, f"{new} new or changed rows ({share:.0%} of {trained})", new, trained)
    return RetrainDecision(
        False,
        f"{new} new or changed rows ({share:.0%} of {trained}): below the blend's "
        f"retrain policy (at least {policy.min_new_rows} and {policy.min_new_share:.0%})",
        new,
        trained,
    )
