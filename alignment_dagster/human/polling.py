"""Polling a labelling backend for new answers: which constitution versions need `human_labels` again.

Plain functions; `human_labels_sensor` only lists partitions, asks the backend for markers and turns the
plan into run requests.

A *marker* is a small string per constitution version that changes whenever its completed annotations
change: ``"<count>@<latest>"``, where count is the number of completed annotations (Label Studio) or label
files (file queue) and latest is the last annotation update time (Label Studio) or a hash of the label file
names (file queue, whose names carry a content hash). A version whose marker differs from the one in the
cursor gets a run; the marker goes into the run key, so the same state of the labels never runs twice, even
when the cursor is lost.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from alignment_dagster.core.keys import sha256_hex
from alignment_dagster.core.watched import dump_cursor, load_cursor

CURSOR_VERSION = 1


def marker(count: int, latest: str) -> str:
    return f"{int(count)}@{latest}"


def marker_count(value: str) -> int:
    """The annotation count in a marker ("3@2025-01-01T..." -> 3); 0 for anything unreadable."""
    head = value.split("@", 1)[0]
    return int(head) if head.isdigit() else 0


def file_queue_marker(label_keys: Iterable[str]) -> str:
    """Marker of a file queue's stored label files: their number and a hash of their sorted names.

    Imported files are stored as `<stem>-<sha8 of the bytes>.jsonl`, so a new or re-imported-with-changes
    file changes the names; importing identical bytes again rewrites the same name and changes nothing.
    """
    keys = sorted(k for k in label_keys if k.endswith(".jsonl"))
    return marker(len(keys), sha256_hex("\n".join(keys))[:12] if keys else "-")


@dataclass(frozen=True)
class LabelRunPlan:
    runs: dict[str, str]  # partition key -> marker to run for (in the order polled)
    cursor: dict[str, str]  # partition key -> last marker seen


def plan_label_runs(markers: Mapping[str, str | None], seen: Mapping[str, str]) -> LabelRunPlan:
    """Which partitions have new completed annotations since `seen` (the cursor), and the next cursor.

    * marker equal to the cursor's: nothing new;
    * marker different (more annotations, an edited or deleted one): run, unless the partition was never
      seen and has no annotations at all (a fresh project: nothing to collect yet);
    * marker None (no project or queue for that version yet) or a partition not polled this tick: no run,
      and its cursor entry is kept as it was.
    """
    cursor = dict(seen)
    runs: dict[str, str] = {}
    for key, value in markers.items():
        if value is None:
            continue
        before = seen.get(key)
        cursor[key] = value
        if value == before or (before is None and marker_count(value) == 0):
            continue
        runs[key] = value
    return LabelRunPlan(runs, cursor)


def run_key(partition_key: str, value: str) -> str:
    return f"{partition_key}:labels:{value}"


def load_label_cursor(cursor: str | None) -> dict[str, str]:
    return load_cursor(cursor, "markers")


def dump_label_cursor(markers: Mapping[str, str]) -> str:
    return dump_cursor(markers, "markers", CURSOR_VERSION)
