"""Partition keys and storage path components: validated before they touch any path."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from typing import Any

KEY_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,126}[a-z0-9])?$")


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


def slugify(name: str) -> str:
    """ASCII-fold and lowercase `name`, squeezing every run of other characters into one '-'."""
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", folded.lower()).strip("-")


def canonical_json(value: Any) -> str:
    """One byte-stable JSON text for a value: sorted keys, no whitespace, UTF-8 kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(value: str | bytes) -> str:
    data = value.encode("utf-8") if isinstance(value, str) else value
    return hashlib.sha256(data).hexdigest()
