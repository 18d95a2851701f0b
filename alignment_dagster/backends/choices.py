"""Choice scoring shared by the backends: which token a choice starts with, and restricting a next-token
distribution to the choices (with a documented floor for choices a server did not list)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def first_token_ids(tokenizer, choices: Sequence[str], prefix: str = "") -> list[int]:
    """The token id each choice starts with when the model emits it right after `prefix` (the chat prompt
    with its assistant generation prompt); must differ per choice.

    Tokenizing a choice on its own can differ from how it tokenizes after the prompt (SentencePiece adds a
    leading "▁", BPE can merge across the boundary), so the choice is tokenized after `prefix` and the first
    token past the prefix's tokens is taken; a standalone tokenization is the fallback when the prefix's
    tokens do not survive (a merge across the boundary).
    """
    base = tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    ids = []
    for choice in choices:
        if not choice:
            raise ValueError("empty choice string")
        joint = tokenizer(prefix + choice, add_special_tokens=False)["input_ids"]
        if prefix and joint[: len(base)] == base and len(joint) > len(base):
            ids.append(joint[len(base)])
            continue
        toks = tokenizer(choice, add_special_tokens=False)["input_ids"]
        if not toks:
            raise ValueError(f"choice {choice!r} tokenizes to nothing")
        ids.append(toks[0])
    if len(set(ids)) != len(ids):
        shared = {c: tokenizer.convert_ids_to_tokens(i) for c, i in zip(choices, ids, strict=False)}
        raise ValueError(
            f"choices {list(choices)} share a first token ({shared}); "
            "the judge reads one next-token distribution, so use choices that start differently"
        )
    return ids


def generation_prefix(tokenizer) -> str:
    """The chat-template text that ends every prompt (assistant generation prompt), for `first_token_ids`."""
    marker = "<<choice-probe-7f3a>>"
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": marker}], add_generation_prompt=True, tokenize=False
    )
    return full.rsplit(marker, 1)[-1]


def renormalise(logprobs: Sequence[float]) -> list[float]:
    """Softmax over the choices' log-probabilities: the next-token distribution restricted to them."""
    m = max(logprobs)
    exp = [math.exp(x - m) for x in logprobs]
    total = sum(exp)
    return [e / total for e in exp]


def restrict_top_logprobs(
    top: Mapping[str, float] | Mapping[int, float], keys: Sequence
) -> tuple[list[float], int]:
    """Log-probabilities of `keys` (choice first tokens) from a server's top-k list, and how many were
    missing.

    A key absent from the top-k list gets the smallest log-probability that *is* listed (the "min
    probability floor"): its true value is at most that, so the floor is the tightest bound the response
    allows, and it errs towards a less confident judgement rather than a falsely certain one. When the
    choices are the model's likely answers (a judge prompt) they are in the top 20 and the floor is unused.
    """
    floor = min(top.values())
    missing = sum(1 for k in keys if k not in top)
    return [top.get(k, floor) for k in keys], missing
