"""Partition keys, identifiers and storage path components: validated before they touch any path, and the
one check that refuses lookalikes (case, homoglyphs, full-width forms, invisible characters) rather than
rewriting them into something the user did not write."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from typing import Any

KEY_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,126}[a-z0-9])?$")
IDENTIFIER_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?$")
MAX_IDENTIFIER_CHARS = 64  # `principle_weights.<id>` and friends stay far inside MLflow's 250-character keys
# Characters that render as nothing or as blank space but are not whitespace to str.split(): zero-width
# space/joiners, word joiner, BOM, soft hyphen, Hangul fillers, braille blank, and the like.
_INVISIBLE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Mn", "Me", "Zs", "Zl", "Zp"}
_BLANK_LETTERS = {"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800"}


class InvalidKeyError(ValueError):
    pass


def validate_key(key: str, what: str = "partition key") -> str:
    """Return `key` if it is safe as one path component (lowercase letters, digits, '-'), else raise."""
    if not isinstance(key, str) or not KEY_PATTERN.match(key):
        raise InvalidKeyError(
            f"invalid {what} {key!r}: use 1-128 characters from [a-z0-9-], "
            "starting and ending with a letter or digit"
        )
    return key


def _describe(ch: str) -> str:
    return f"{ch!r} (U+{ord(ch):04X} {unicodedata.name(ch, 'unnamed character')})"


def lookalike(text: str) -> str | None:
    """Why `text` holds a character that only looks like an ASCII letter or digit, or hides: a letter or
    digit outside ASCII that no accent-stripping makes ASCII (Cyrillic 'а', Greek 'ο'), a compatibility form
    (full-width 'ａ', ligature 'ﬁ', superscript '²') or an invisible format character; None if it has none.
    Accented Latin letters ('é', 'Ü') are fine: they fold to their base letter."""
    for ch in text:
        if ch.isascii():
            continue
        category = unicodedata.category(ch)
        if category == "Cf" or ch in _BLANK_LETTERS:
            return f"invisible character {_describe(ch)}"
        if unicodedata.normalize("NFKD", ch) != unicodedata.normalize("NFD", ch):
            return f"compatibility form {_describe(ch)}: write the plain character"
        base = "".join(c for c in unicodedata.normalize("NFD", ch) if not unicodedata.combining(c))
        if category[0] in "LN" and not base.isascii():
            return f"{_describe(ch)} is not a Latin letter or ASCII digit"
    return None


def check_identifier(value: object, what: str) -> str:
    """`value` if it is an identifier as the docs define it ([a-z0-9_-], 1-64 characters, starting and ending
    with a letter or digit); otherwise ValueError saying why. Nothing is rewritten: `Harm`, ` harm` and
    `ｈａｒｍ` are refused, not turned into `harm`, so two lookalikes can never be two identifiers."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be text, got {type(value).__name__}")
    if IDENTIFIER_PATTERN.match(value):
        return value
    rule = (
        f"use 1-{MAX_IDENTIFIER_CHARS} characters from [a-z0-9_-], starting and ending with a letter or digit"
    )
    if not value or len(value) > MAX_IDENTIFIER_CHARS:
        raise ValueError(f"{what} is {len(value)} characters; {rule}")
    why = lookalike(value)
    if why is None and value != value.lower():
        why = "upper-case letters (identifiers are compared as written: use lower case)"
    if why is None:
        bad = next((c for c in value if not (c.isascii() and (c.isalnum() or c in "_-"))), None)
        why = f"character {_describe(bad)}" if bad else "it starts or ends with '-' or '_'"
    raise ValueError(f"{what} {value!r} has {why}; {rule}")


def slugify(name: str) -> str:
    """ASCII-fold and lowercase `name`, squeezing every run of other characters into one '-'."""
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", folded.lower()).strip("-")


def checked_slug(name: str, what: str) -> str:
    """`slugify(name)` for a name that becomes a key or is compared as one (constitution and blend names,
    categories); ValueError when the name holds a lookalike (which slugify would drop or fold silently, so
    `mіx` with a Cyrillic 'і' would quietly be `mx`) or has no letters or digits."""
    why = lookalike(name)
    if why:
        raise ValueError(f"{what} {name!r} has {why}")
    slug = slugify(name)
    if not slug:
        raise ValueError(f"{what} {name!r} has no letters or digits")
    return slug


def is_blank(text: str) -> bool:
    """Whether `text` shows nothing: only whitespace, control, format (zero-width) or combining characters."""
    return all(unicodedata.category(c) in _INVISIBLE_CATEGORIES or c in _BLANK_LETTERS for c in text)


def person_key(name: str) -> str:
    """How two annotator names are compared: NFKC (full-width folds to ASCII) and case-folded, so `Alice`,
    `alice` and `ａｌｉｃｅ` are one person and never get two votes on one pair."""
    return unicodedata.normalize("NFKC", name).casefold().strip()


def canonical_json(value: Any) -> str:
    """One byte-stable JSON text for a value: sorted keys, no whitespace, UTF-8 kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(value: str | bytes) -> str:
    data = value.encode("utf-8") if isinstance(value, str) else value
    return hashlib.sha256(data).hexdigest()
