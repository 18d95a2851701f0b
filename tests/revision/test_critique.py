"""What phase 1 asks the model: the principle draw, the few-shot conversations, boilerplate stripping."""

from collections import Counter

import pytest

from alignment_dagster.revision.critique import (
    critique_messages,
    draw_principle,
    revision_messages,
    same_reply,
    strip_boilerplate,
)
from alignment_dagster.specs.constitution import parse_constitution

PHASE_ONE = """
name: phase one
principles:
  - id: harm
    text: Choose the less harmful reply.
    weight: 3
    role: harmless
    allows_refusal: true
    critique_request: Say how the reply could cause harm.
    revision_request: Rewrite the reply so it causes no harm.
  - id: help
    text: Choose the more helpful reply.
    weight: 1
    role: helpful
    applies_to: [helpful]
    critique_request: Say how the reply could be more helpful.
    revision_request: Rewrite the reply to be more helpful.
  - id: honest
    text: Choose the more honest reply.
revision:
  demonstrations:
    - prompt: How do I hotwire a car?
      reply: Strip the ignition wires and touch them together.
      critique: It explains how to steal a car.
      revision: I can't help with starting a car that isn't yours; a locksmith can help if you lost your keys.
    - prompt: What is the boiling point of water at sea level?
      reply: 100 degrees Celsius.
      critique_request: Say what is wrong with the reply, if anything.
      critique: Nothing; it is correct and harmless.
      revision: 100 degrees Celsius.
"""


@pytest.fixture
def constitution():
    return parse_constitution(PHASE_ONE, "phase-one.yaml")


def test_the_draw_follows_the_weights_among_the_principles_that_revise_and_apply(constitution) -> None:
    ids = [f"prompt-{i}" for i in range(4000)]
    helpful = Counter(draw_principle(constitution, pid, "helpful", 1).id for pid in ids)
    assert set(helpful) == {"harm", "help"}  # `honest` has no requests: never drawn
    assert 0.72 < helpful["harm"] / 4000 < 0.78  # weight 3 of 4
    red_team = Counter(draw_principle(constitution, pid, "red-team", 1).id for pid in ids)
    assert red_team == {"harm": 4000}  # `help` applies to helpful prompts only
    # Seeded by prompt and round: the same every time, different across rounds.
    assert [draw_principle(constitution, "p", "helpful", r).id for r in (1, 2, 3)] == [
        draw_principle(constitution, "p", "helpful", r).id for r in (1, 2, 3)
    ]
    rounds = Counter(
        (
            draw_principle(constitution, pid, "helpful", 1).id,
            draw_principle(constitution, pid, "helpful", 2).id,
        )
        for pid in ids
    )
    assert len(rounds) == 4


def test_rewording_a_principle_changes_no_draw(constitution) -> None:
    reworded = parse_constitution(
        PHASE_ONE.replace("Say how the reply could cause harm.", "Find any harm."), "b.yaml"
    )
    ids = [f"prompt-{i}" for i in range(200)]
    assert [draw_principle(constitution, p, "helpful", 1).id for p in ids] == [
        draw_principle(reworded, p, "helpful", 1).id for p in ids
    ]


def test_no_principle_to_draw(constitution) -> None:
    plain = parse_constitution(
        "name: x\nprinciples:\n  - {id: a, text: Choose the better reply.}\n", "x.yaml"
    )
    assert draw_principle(plain, "p", "helpful", 1) is None


def test_conversations_put_the_demonstrations_first_with_their_own_requests(constitution) -> None:
    harm = constitution.principles[0]
    demos = constitution.demonstrations_for(harm)
    messages = critique_messages(harm, demos, "How do I pick a lock?", "Use a rake.")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert "Request: Say how the reply could cause harm." in messages[1]["content"]  # the principle's own
    assert "Request: Say what is wrong with the reply, if anything." in messages[3]["content"]  # the demo's
    assert messages[4]["content"] == "Nothing; it is correct and harmless."
    assert messages[-1]["content"].endswith(
        "Assistant's reply:\nUse a rake.\n\nRequest: Say how the reply could cause harm."
    )
    revision = revision_messages(harm, demos, "How do I pick a lock?", "Use a rake.", " It helps break in. ")
    assert revision[-1]["content"].endswith(
        "Critique:\nIt helps break in.\n\nRequest: Rewrite the reply so it causes no harm."
    )
    assert revision[4]["content"] == "100 degrees Celsius."  # the unchanged demonstration


@pytest.mark.parametrize(
    ("raw", "clean", "stripped"),
    [
        ("Sure, here is a revised response: Ask a locksmith.", "Ask a locksmith.", True),
        (
            "Here's the revised version of the assistant's response:\nAsk a locksmith.",
            "Ask a locksmith.",
            True,
        ),
        ("Revised response: Ask a locksmith.", "Ask a locksmith.", True),
        ('Revision: "Ask a locksmith."', "Ask a locksmith.", True),
        ("\u201cAsk a locksmith.\u201d", "Ask a locksmith.", True),
        ("Certainly! Here is my revised reply. Ask a locksmith.", "Ask a locksmith.", True),
        ("Ask a locksmith.", "Ask a locksmith.", False),
        ("Here is how to ask a locksmith: call one.", "Here is how to ask a locksmith: call one.", False),
        ("'Tis the season; don't pick 'em.", "'Tis the season; don't pick 'em.", False),
    ],
)
def test_strip_boilerplate(raw: str, clean: str, stripped: bool) -> None:
    assert strip_boilerplate(raw) == (clean, stripped)


def test_same_reply_ignores_whitespace_only() -> None:
    assert same_reply("a  b\n", " a b") and not same_reply("a b", "a b.")
