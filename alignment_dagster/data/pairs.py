"""Response pairs: forming pairs from sampled responses, and importing labelled pair datasets.

Known labels of imported pairs are returned *apart* from the pairs: the judge never sees them; they feed
the replay labeller and judge measurements.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pandas as pd

from alignment_dagster.core.keys import canonical_json, is_blank, sha256_hex
from alignment_dagster.data.prompts import normalise_prompt, prompt_id_for
from alignment_dagster.data.records import (
    BadRow,
    FieldError,
    category_field,
    parse_choice,
    read_records,
    text_field,
)

PAIR_COLUMNS = [
    "pair_id",
    "prompt_id",
    "prompt",
    "response_a",
    "response_b",
    "origin",
    "policy_model",
    "category",
]
LABEL_COLUMNS = ["pair_id", "label", "source_dataset"]
HH_ASSISTANT = "\n\nAssistant:"
KNOWN_COLUMNS = [
    "pair_id",
    "prompt_id",
    "prompt",
    "response_a",
    "response_b",
    "category",
    "label",
    "source_dataset",
    "split",
]
HELDOUT, TRAIN = "heldout", "train"
HELDOUT_SALT = "known-heldout-v1"
# Imported text is capped like prompts are (the shared HH-RLHF dev file's longest transcript is 4,327
# characters): a conversation, each reply, and an HH transcript holding both.
MAX_CONVERSATION_CHARS = 32_000
MAX_REPLY_CHARS = 16_000
MAX_TRANSCRIPT_CHARS = MAX_CONVERSATION_CHARS + MAX_REPLY_CHARS


def pair_id_for(prompt: str, response_a: str, response_b: str) -> str:
    return sha256_hex(canonical_json([prompt, response_a, response_b]))[:16]


def swap_for(key: str) -> bool:
    """Deterministic coin flip: whether the preferred reply of an imported pair is shown as B."""
    return int(sha256_hex("ab-order:" + key)[:8], 16) % 2 == 1


@dataclass
class PairSet:
    pairs: pd.DataFrame
    labels: pd.DataFrame
    bad_rows: list[BadRow] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)


def _degenerate(a: str, b: str) -> str | None:
    if is_blank(a) or is_blank(b):
        return "empty_response"
    if normalise_prompt(a) == normalise_prompt(b):
        return "identical_responses"
    return None


def form_pairs(
    prompt_id: str,
    prompt: str,
    responses: list[str],
    *,
    category: str | None,
    policy_model: str,
    max_pairs: int | None = None,
    dropped: Counter | None = None,
) -> list[dict]:
    """All (or the first `max_pairs`) distinct, non-degenerate pairs among one prompt's samples."""
    out: list[dict] = []
    for a, b in itertools.combinations(responses, 2):
        reason = _degenerate(a, b)
        if reason:
            if dropped is not None:
                dropped[reason] += 1
            continue
        out.append(
            {
                "pair_id": pair_id_for(prompt, a, b),
                "prompt_id": prompt_id,
                "prompt": prompt,
                "response_a": a,
                "response_b": b,
                "origin": "sampled",
                "policy_model": policy_model,
                "category": category,
            }
        )
        if max_pairs is not None and len(out) >= max_pairs:
            break
    return out


def split_hh_transcript(text: str) -> tuple[str, str]:
    """(conversation so far, final assistant reply) of an HH-RLHF transcript."""
    cut = text.rfind(HH_ASSISTANT)
    if cut < 0:
        raise ValueError("no '\\n\\nAssistant:' turn")
    return text[:cut].strip(), text[cut + len(HH_ASSISTANT) :].strip()


def _hh_row(rec: dict) -> tuple[str, str, str, str | None]:
    transcripts = {name: text_field(rec, name, MAX_TRANSCRIPT_CHARS) for name in ("chosen", "rejected")}
    try:
        conv_c, chosen = split_hh_transcript(transcripts["chosen"])
    except ValueError as e:
        raise FieldError("chosen", str(e)) from None
    try:
        conv_r, rejected = split_hh_transcript(transcripts["rejected"])
    except ValueError as e:
        raise FieldError("rejected", str(e)) from None
    if conv_c != conv_r:
        raise FieldError("rejected", "conversation differs from the chosen transcript's")
    if len(conv_c) > MAX_CONVERSATION_CHARS:
        raise FieldError("chosen", f"conversation is {len(conv_c)} characters, over {MAX_CONVERSATION_CHARS}")
    for name, reply in (("chosen", chosen), ("rejected", rejected)):
        if len(reply) > MAX_REPLY_CHARS:
            raise FieldError(name, f"final reply is {len(reply)} characters, over {MAX_REPLY_CHARS}")
    return conv_c, chosen, rejected, "chosen"


def _plain_row(rec: dict) -> tuple[str, str, str, str | None]:
    prompt = text_field(rec, "prompt", MAX_CONVERSATION_CHARS)
    a, b = (text_field(rec, name, MAX_REPLY_CHARS) for name in ("response_a", "response_b"))
    raw_label = rec.get("label")
    label = None
    # An empty label is "not labelled": a CSV with a label column has a cell in every row, filled in or not.
    if raw_label is not None and str(raw_label).strip():
        label = parse_choice(str(raw_label))
        if label is None:
            raise FieldError("label", f"{raw_label!r} is not one of A, B, tie")
    return prompt, a, b, label


def import_pairs(
    sources: Iterable[str],
    read_bytes: Callable[[str], bytes],
    *,
    category: str = "red-team",
    limit: int | None = None,
) -> PairSet:
    """Import pairs from HH-RLHF JSONL (chosen/rejected transcripts) or JSONL/CSV/Parquet with prompt,
    response_a, response_b and optional label (A/B/tie) and category.

    HH pairs get a deterministic A/B order per pair (so "A" is not always the preferred reply), and their
    label says which one the human preferred. Bad rows (and files that cannot be read) are reported and
    skipped; duplicates are dropped; text is capped (MAX_CONVERSATION_CHARS, MAX_REPLY_CHARS).
    """
    pairs: list[dict] = []
    labels: list[dict] = []
    result = PairSet(pd.DataFrame(columns=PAIR_COLUMNS), pd.DataFrame(columns=LABEL_COLUMNS))
    seen: set[str] = set()
    for uri in sources:
        for row, rec, error in read_records(uri, read_bytes):
            if limit is not None and len(pairs) >= limit:
                break
            if rec is None:
                result.bad_rows.append(BadRow(uri, row, None, error or "unreadable row"))
                continue
            try:
                prompt, a, b, label = _pair_row(rec)
                row_category = category_field(rec, category)
            except FieldError as e:
                result.bad_rows.append(BadRow(uri, row, e.field, str(e)))
                continue
            pid = pair_id_for(prompt, a, b)
            reason = (
                _degenerate(a, b)
                or ("empty_prompt" if is_blank(prompt) else None)
                or ("duplicate" if pid in seen else None)
            )
            if reason:
                result.dropped[reason] += 1
                continue
            seen.add(pid)
            pairs.append(
                {
                    "pair_id": pid,
                    "prompt_id": prompt_id_for(normalise_prompt(prompt)),
                    "prompt": prompt,
                    "response_a": a,
                    "response_b": b,
                    "origin": "imported",
                    "policy_model": None,
                    "category": row_category,
                }
            )
            if label is not None:
                labels.append({"pair_id": pid, "label": label, "source_dataset": uri.rsplit("/", 1)[-1]})
    if pairs:
        result.pairs = pd.DataFrame(pairs, columns=PAIR_COLUMNS)
    if labels:
        result.labels = pd.DataFrame(labels, columns=LABEL_COLUMNS)
    return result


def _pair_row(rec: dict) -> tuple[str, str, str, str | None]:
    """(prompt, reply A, reply B, label or None) of an HH-RLHF row (chosen/rejected transcripts, shown in a
    deterministic order per pair so that "A" is not always the preferred reply) or of a plain pair row."""
    if "chosen" not in rec and "rejected" not in rec:
        return _plain_row(rec)
    prompt, preferred, other, _ = _hh_row(rec)
    if swap_for(sha256_hex(canonical_json([prompt, preferred, other]))):
        return prompt, other, preferred, "B"
    return prompt, preferred, other, "A"


def known_split(prompt_id: str, heldout_fraction: float) -> str:
    """`heldout` or `train` for an imported pair, by a hash of its prompt (the same prompt, the same side)."""
    bucket = int(sha256_hex(f"{HELDOUT_SALT}:{prompt_id}")[:8], 16) / 0x1_0000_0000
    return HELDOUT if bucket < heldout_fraction else TRAIN


def heldout_ids(known: pd.DataFrame) -> set[str]:
    """Pair ids of the held-out part (a table without a split column predates the split: all held out)."""
    if not len(known):
        return set()
    return set(known["pair_id"] if "split" not in known else known.loc[known["split"] == HELDOUT, "pair_id"])
