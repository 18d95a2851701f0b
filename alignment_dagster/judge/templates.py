"""Versioned judge prompt templates. The template version is part of every judgment's cache key.

The principle comes *after* the conversation and both replies, so every principle of one pair and order
shares one long prompt prefix: a backend can reuse that prefix's KV cache and only score the short
per-principle suffix.
"""

from __future__ import annotations

from dataclasses import dataclass

Message = dict[str, str]


@dataclass(frozen=True)
class JudgeTemplate:
    id: str
    version: str
    system: str
    user: str  # str.format fields: conversation, first, second, principle
    choices: tuple[str, str] = ("A", "B")

    def render(self, conversation: str, first: str, second: str, principle: str) -> list[Message]:
        """Chat messages asking which of two replies (shown as A=first, B=second) follows the principle."""
        user = self.user.format(conversation=conversation.strip(), first=first.strip(), second=second.strip(),
                                principle=principle.strip())
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


PAIRWISE_V1 = JudgeTemplate(
    id="pairwise-v1",
    version="pairwise-v1.0",
    system="You are a careful, impartial judge of AI assistant replies.",
    user=(
        "Here is a conversation between a user and an AI assistant, followed by two candidate replies.\n\n"
        "### Conversation\n{conversation}\n\n"
        "### Reply A\n{first}\n\n"
        "### Reply B\n{second}\n\n"
        "### Principle\n{principle}\n\n"
        "Which reply better follows the principle? Answer with a single letter: A or B."
    ),
)

TEMPLATES: dict[str, JudgeTemplate] = {t.id: t for t in (PAIRWISE_V1,)}


def get_template(template_id: str) -> JudgeTemplate:
    try:
        return TEMPLATES[template_id]
    except KeyError:
        raise ValueError(f"unknown judge template {template_id!r}; known: {', '.join(sorted(TEMPLATES))}") from None
