"""What the model is asked in phase 1: which principle a chain's round draws, the critique and revision
conversations (few-shot demonstrations first), and the boilerplate a small model wraps its revision in.

The draw depends on the prompt, the round and the principles' ids and weights only, never on their texts,
so rewording a principle's requests changes the inputs (and so the cache keys) of exactly the rounds that
drew it.
"""

from __future__ import annotations

import re

from alignment_dagster.core.keys import sha256_hex
from alignment_dagster.judge.runner import applicable
from alignment_dagster.specs.constitution import Constitution, Demonstration, Principle

Message = dict[str, str]

CRITIQUE_SYSTEM = (
    "You review an AI assistant's reply against one request and say plainly what is wrong with it. "
    "If nothing is wrong, say so."
)
REVISION_SYSTEM = (
    "You rewrite an AI assistant's reply so that the critique no longer applies. Write only the new reply, "
    "nothing before or after it. If the critique found nothing wrong, repeat the reply unchanged."
)


def draw_principle(
    constitution: Constitution, prompt_id: str, category: str | None, round_: int
) -> Principle | None:
    """The principle a chain's round critiques under: drawn by weight among the revising principles that
    apply to the prompt's category, from a hash of (prompt, round); None when none applies."""
    candidates = [p for p in applicable(constitution.principles, category) if p.revises]
    if not candidates:
        return None
    u = int(sha256_hex(f"{prompt_id}:{round_}")[:12], 16) / float(1 << 48)
    total = sum(p.weight for p in candidates)
    edge = 0.0
    for p in candidates:
        edge += p.weight / total
        if u < edge:
            return p
    return candidates[-1]


def _reviewed(prompt: str, reply: str) -> str:
    return f"Conversation:\nUser: {prompt.strip()}\n\nAssistant's reply:\n{reply.strip()}"


def _critique_turn(prompt: str, reply: str, request: str) -> str:
    return f"{_reviewed(prompt, reply)}\n\nRequest: {request}"


def _revision_turn(prompt: str, reply: str, critique: str, request: str) -> str:
    return f"{_reviewed(prompt, reply)}\n\nCritique:\n{critique.strip()}\n\nRequest: {request}"


def critique_messages(
    principle: Principle, demonstrations: list[Demonstration], prompt: str, reply: str
) -> list[Message]:
    """The conversation asking for a critique of `reply` under `principle`, after the demonstrations."""
    messages = [{"role": "system", "content": CRITIQUE_SYSTEM}]
    for d in demonstrations:
        request = d.critique_request or principle.critique_request
        messages += [
            {"role": "user", "content": _critique_turn(d.prompt, d.reply, request)},
            {"role": "assistant", "content": d.critique},
        ]
    return [*messages, {"role": "user", "content": _critique_turn(prompt, reply, principle.critique_request)}]


def revision_messages(
    principle: Principle, demonstrations: list[Demonstration], prompt: str, reply: str, critique: str
) -> list[Message]:
    """The conversation asking for a revision of `reply` that answers `critique`, after the demonstrations."""
    messages = [{"role": "system", "content": REVISION_SYSTEM}]
    for d in demonstrations:
        request = d.revision_request or principle.revision_request
        messages += [
            {"role": "user", "content": _revision_turn(d.prompt, d.reply, d.critique, request)},
            {"role": "assistant", "content": d.revision},
        ]
    turn = _revision_turn(prompt, reply, critique, principle.revision_request)
    return [*messages, {"role": "user", "content": turn}]


# Openers a small model puts before the revision itself ("Sure, here is a revised response:"), and labels.
_LEAD = re.compile(
    r"^\s*(?:(?:sure|okay|ok|certainly|of course|absolutely)[,.!]?\s*)?"
    r"(?:(?:here(?:'s| is| are)|below is|this is)\s+(?:a|an|the|my)?\s*"
    r"(?:revised|rewritten|new|improved|updated|better)?\s*(?:version|response|reply|answer|revision)"
    r"(?:\s+of\s+the\s+(?:assistant'?s?\s+)?(?:response|reply|answer))?\s*[:.]"
    r"|(?:revised|rewritten|new|improved|updated)\s+(?:version|response|reply|answer)\s*:"
    r"|revision\s*:|assistant'?s?\s+(?:revised\s+)?(?:reply|response)\s*:)\s*",
    re.IGNORECASE,
)
_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019"}


def strip_boilerplate(text: str) -> tuple[str, bool]:
    """The revision without openers and labels around it, or wrapping quotes; and whether any was removed."""
    out = text.strip()
    while (m := _LEAD.match(out)) and m.end() > 0:
        out = out[m.end() :].strip()
    if (
        len(out) >= 2
        and _QUOTES.get(out[0]) == out[-1]
        and out.count(out[0]) == (2 if out[0] == out[-1] else 1)
    ):
        out = out[1:-1].strip()
    return out, out != text.strip()


def same_reply(a: str, b: str) -> bool:
    """Equal up to whitespace: a revision that only re-spaces the reply changed nothing."""
    return " ".join(a.split()) == " ".join(b.split())
