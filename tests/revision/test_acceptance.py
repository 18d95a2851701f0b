"""The revision gate's decisions on exact numbers, and which round a chain keeps."""

import pytest

from alignment_dagster.revision.acceptance import best_round, decide_round, length_ratio
from alignment_dagster.specs.constitution import RevisionSettings

SETTINGS = RevisionSettings(
    min_gain=0.05, helpful_tolerance=0.05, max_length_ratio=2.0, min_length_ratio=0.25
)
BEFORE = "Here is how you pick a basic pin tumbler lock with a tension wrench and a rake."  # 79 characters
SAFER = "Lock picking is legal only on locks you own; a locksmith can open yours if you are locked out."
REFUSAL = "I'm sorry, but I can't help with picking locks."


@pytest.mark.parametrize(
    ("after", "p", "p_helpful", "allows_refusal", "accepted", "reasons", "gain", "stop"),
    [
        (SAFER, 0.7, 0.6, False, True, (), 0.2, False),
        (SAFER, 0.7, None, False, True, (), 0.2, False),  # no helpful principle applies
        (SAFER, 0.55, 0.5, False, True, (), 0.05, False),  # exactly min_gain is enough
        (SAFER, 0.54, 0.5, False, False, ("no_gain",), 0.04, True),
        (SAFER, 0.3, 0.5, False, False, ("no_gain",), -0.2, True),
        (SAFER, 0.8, 0.45, False, True, (), 0.3, False),  # helpfulness 0.5 - tolerance: not a regression
        (SAFER, 0.8, 0.44, False, False, ("helpfulness_regressed",), 0.3, False),
        (REFUSAL, 0.8, 0.5, False, False, ("new_refusal",), 0.3, False),
        (REFUSAL, 0.8, 0.5, True, True, (), 0.3, False),  # the principle allows a refusal
        (SAFER * 2, 0.8, 0.5, False, False, ("length_ratio",), 0.3, False),  # 188 / 79 characters
        ("No.", 0.8, 0.5, False, False, ("length_ratio",), 0.3, False),
        (
            REFUSAL[:19],
            0.5,
            0.3,
            False,
            False,
            ("no_gain", "helpfulness_regressed", "new_refusal", "length_ratio"),
            0.0,
            True,
        ),
        ("  " + BEFORE.replace(" ", "  ") + "\n", 0.9, 0.9, False, False, ("no_change",), 0.0, True),
        ("   ", 0.9, 0.9, False, False, ("empty",), 0.0, True),
    ],
)
def test_decide_round(after, p, p_helpful, allows_refusal, accepted, reasons, gain, stop) -> None:
    decision = decide_round(BEFORE, after, p, p_helpful, allows_refusal, SETTINGS)
    assert (decision.accepted, decision.reasons, decision.stop) == (accepted, reasons, stop)
    assert decision.gain == pytest.approx(gain)
    assert decision.reason == (",".join(reasons) or "accepted")
    assert decision.length_ratio == length_ratio(BEFORE, after)


def test_a_refusal_that_was_already_there_is_not_new() -> None:
    before = "I'm sorry, I can't do that, it would not be right."
    decision = decide_round(
        before, "I'm sorry, I can't help with that, but a locksmith can.", 0.8, None, False, SETTINGS
    )
    assert decision.accepted and not decision.new_refusal


def test_length_ratio_counts_characters_of_the_stripped_texts() -> None:
    assert length_ratio("abcd", "  abcdefgh ") == 2.0
    assert length_ratio("", "abc") == 3.0  # an empty reply counts as one character, never a division by 0


def test_best_round_is_the_highest_total_gain_on_the_accepted_path() -> None:
    accepted = decide_round(BEFORE, SAFER, 0.7, None, False, SETTINGS)  # gain 0.2
    small = decide_round(BEFORE, SAFER, 0.6, None, False, SETTINGS)  # gain 0.1
    refused = decide_round(BEFORE, REFUSAL, 0.9, None, False, SETTINGS)  # new refusal
    assert best_round([(1, accepted), (2, refused), (3, small)]) == 3
    assert best_round([(1, accepted), (2, refused)]) == 1
    assert best_round([(1, refused)]) is None
    assert best_round([]) is None
