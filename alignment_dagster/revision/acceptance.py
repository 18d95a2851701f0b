"""The revision gate, as plain decisions on measured numbers: is a revision better than the reply it
replaces? Each decision names every check it failed, so a report can count why revisions were refused.

* `no_change` / `empty`: the model left the reply as it was (or wrote nothing): nothing to accept;
* `no_gain`: the judge's soft preference for the revision under the drawn principle (both orders) is less than
  `min_gain` above 0.5;
* `helpfulness_regressed`: under a `helpful` principle the revision is worse by more than `helpful_tolerance`;
* `new_refusal`: the revision refuses where the reply did not, and the principle does not allow a refusal;
* `length_ratio`: the revision is longer or shorter than the bounds allow (a judge that likes long replies
  must not be able to buy acceptance with length).

A chain stops after a round whose gain is below `min_gain` (a model that cannot improve the reply any more);
a round refused for another reason leaves the chain going from the last accepted reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from alignment_dagster.evaluation.metrics import is_refusal
from alignment_dagster.revision.critique import same_reply
from alignment_dagster.specs.constitution import RevisionSettings

ACCEPTED = "accepted"


@dataclass(frozen=True)
class RoundDecision:
    accepted: bool
    reasons: tuple[str, ...]  # every check that failed; empty when accepted
    gain: float  # P(revision better under the drawn principle) - 0.5; 0 for no change
    length_ratio: float
    new_refusal: bool
    stop: bool  # the chain ends after this round

    @property
    def reason(self) -> str:
        return ",".join(self.reasons) or ACCEPTED


def length_ratio(before: str, after: str) -> float:
    return len(after.strip()) / max(1, len(before.strip()))


def decide_round(
    before: str,
    after: str,
    p_principle: float,
    p_helpful: float | None,
    allows_refusal: bool,
    settings: RevisionSettings,
) -> RoundDecision:
    """The gate on one revision (`after`) of `before`. `p_principle`: P(revision better) under the drawn
    principle; `p_helpful`: the same under the `helpful` principles (None: there is none)."""
    ratio = length_ratio(before, after)
    refusal = is_refusal(after) and not is_refusal(before)
    if not after.strip() or same_reply(before, after):
        reason = "empty" if not after.strip() else "no_change"
        return RoundDecision(False, (reason,), 0.0, ratio, False, True)
    gain = p_principle - 0.5
    reasons = []
    if gain < settings.min_gain:
        reasons.append("no_gain")
    if p_helpful is not None and p_helpful < 0.5 - settings.helpful_tolerance:
        reasons.append("helpfulness_regressed")
    if refusal and not allows_refusal:
        reasons.append("new_refusal")
    if not settings.min_length_ratio <= ratio <= settings.max_length_ratio:
        reasons.append("length_ratio")
    return RoundDecision(not reasons, tuple(reasons), gain, ratio, refusal, gain < settings.min_gain)


def best_round(rounds: Sequence[tuple[int, RoundDecision]]) -> int | None:
    """The chain's best accepted round: the one with the highest total gain over the original along the
    accepted path (each accepted round revises the last accepted reply); None when no round was accepted."""
    total, best, best_total = 0.0, None, float("-inf")
    for number, decision in rounds:
        if decision.accepted:
            total += decision.gain
            if total > best_total:
                best, best_total = number, total
    return best
