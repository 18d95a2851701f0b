"""Shared pieces of the labelling backends: the error record, choice parsing, timestamps, guidance text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd

from alignment_dagster.human import HUMAN_LABEL_COLUMNS

CHOICE_NAMES = {"a": "A", "b": "B", "tie": "tie"}


@dataclass(frozen=True)
class LabelError:
    """One rejected row (or, with row None, a whole file): where it is and what is wrong."""

    file: str
    row: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        parts = [self.file]
        if self.row is not None:
            parts.append(f"row {self.row}")
        if self.field:
            parts.append(self.field)
        return ": ".join(parts + [self.message])


def parse_choice(value: object) -> str | None:
    """A/B/tie from a human's answer, case and surrounding spaces ignored; None if it is not one of them."""
    if not isinstance(value, str):
        return None
    return CHOICE_NAMES.get(value.strip().lower())


def utc_iso(value: datetime | str | None = None) -> str:
    """A UTC ISO-8601 timestamp ("2025-01-31T12:00:00.123456+00:00"); now when value is None.

    Raises ValueError for text that is not ISO-8601; naive times are taken as UTC.
    """
    if value is None:
        ts = datetime.now(UTC)
    elif isinstance(value, datetime):
        ts = value
    else:
        ts = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).isoformat()


def guidance_lines(guidance: str | Sequence[str]) -> list[str]:
    """Principles as a list of lines: a string is split on lines, a sequence (principle texts) kept."""
    lines = guidance.splitlines() if isinstance(guidance, str) else [str(g) for g in guidance]
    return [line.strip() for line in lines if line.strip()]


def empty_labels() -> pd.DataFrame:
    return pd.DataFrame(columns=HUMAN_LABEL_COLUMNS)
