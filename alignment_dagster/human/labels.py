"""The `human_labels` contract and what every labelling backend shares: columns, timestamps, guidance text.

pair_id, choice (A/B/tie), annotator, labelled_at (UTC ISO), backend, comment. When one annotator labelled a
pair more than once (a corrected answer, the same file imported twice) only their latest label counts
(latest `labelled_at`; the later row on equal times), so a person never gets two votes on one pair.
Annotators are compared as `core.keys.person_key` (case and full-width forms ignored: `Alice` is `alice`),
and a label dated in the future is refused where it is imported (`label_time`), since it would shadow every
later correction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pandas as pd

from alignment_dagster.core.keys import person_key

CHOICES = ("A", "B", "tie")
HUMAN_LABEL_COLUMNS = ["pair_id", "choice", "annotator", "labelled_at", "backend", "comment"]
CLOCK_SKEW = timedelta(hours=24)  # a label may be this far ahead of the importing clock (time zones, drift)


def latest_per_annotator(labels: pd.DataFrame) -> pd.DataFrame:
    """One row per (pair_id, annotator): the latest by labelled_at, later row on equal times; annotator
    names come back as their `person_key`, the form they are compared in."""
    bad = sorted(set(labels["choice"]) - set(CHOICES))
    if bad:
        raise ValueError(f"human_labels: choice {bad[0]!r} is not one of A, B, tie")
    if labels.empty:
        return labels.copy()
    df = labels.reset_index(drop=True)
    df = df.assign(
        annotator=df["annotator"].map(lambda a: person_key(str(a))),
        _t=pd.to_datetime(df["labelled_at"], utc=True, format="ISO8601"),
        _i=range(len(df)),
    )
    df = df.sort_values(["_t", "_i"]).drop_duplicates(["pair_id", "annotator"], keep="last")
    return df.sort_values("_i").drop(columns=["_t", "_i"]).reset_index(drop=True)


def label_time(value: str, now: datetime | str | None = None) -> str:
    """An imported label's `labelled_at` as UTC ISO; ValueError when it is no ISO-8601 time or lies more than
    CLOCK_SKEW after `now` (default: the current time)."""
    try:
        when = utc_iso(value)
    except (ValueError, OverflowError):
        raise ValueError(f"{value!r} is not an ISO-8601 time") from None
    limit = datetime.fromisoformat(utc_iso(now)) + CLOCK_SKEW
    if datetime.fromisoformat(when) > limit:
        raise ValueError(
            f"{value!r} is in the future (later than {limit.isoformat()}): a future label would outrank "
            "every later correction"
        )
    return when


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
