"""File queue: the labelling backend that needs no server. Batches go out as files, labels come back as files.

Layout under `prefix` in any `Storage` (local folder or S3):

    <prefix>/batches/<batch_id>/tasks.jsonl   one task per line (pair_id, priority, route_reason, category,
                                              prompt, response_a, response_b)
    <prefix>/batches/<batch_id>/tasks.csv     the same tasks plus empty choice, annotator, comment columns:
                                              a form to fill in and import back as it is
    <prefix>/batches/<batch_id>/GUIDANCE.md   the constitution's principles and how to answer
    <prefix>/labels/<file stem>-<sha8>.jsonl  accepted labels of one imported file (human_labels rows)

Label files (JSONL or CSV, UTF-8) carry pair_id and choice (A, B or tie, any case), optionally annotator
(default "anonymous"), comment and labelled_at (ISO-8601; default: the import time); other columns are
ignored, so a filled-in tasks.csv imports directly. A row whose choice is empty is "not labelled yet": it
is counted in `ImportResult.n_unlabelled` and skipped without an error, so a partly filled form can be
uploaded. Every other problem rejects the row with its number, and the rest of the file is kept:

* unreadable rows (bytes that are not UTF-8, invalid JSON, not an object, more CSV cells than header
  columns);
* pair_id missing, or in no batch of this queue;
* choice missing (JSONL key absent) or not A/B/tie; annotator malformed (over 200 characters, control or
  invisible characters); labelled_at not ISO-8601, or more than a day after the import (a label from the
  future would outrank every later correction);
* duplicates: the same pair and annotator again with the same choice (the first row is kept);
* conflicts: the same pair and annotator with different choices (all of those rows are rejected,
  since the file does not say which answer stands).

Row numbers: for CSV the data row, header not counted (row 1 is the first row under the header, as in the
rest of the project); for JSONL the line number in the file.

Importing the same bytes again rewrites the same labels file (idempotent). Labels from different files
accumulate; when one annotator labelled a pair in several files, `labels()` keeps the latest labelled_at
(see `human.latest_per_annotator`). Annotators are compared case-insensitively (`core.keys.person_key`).

tasks.csv is opened in spreadsheets: a text cell starting with `=`, `+`, `-`, `@`, tab or carriage return
would run as a formula there, so such cells are written with a leading `'` (OWASP's advice); nothing that
is read back (pair_id, choice, annotator, comment) is touched on import.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import pandas as pd

from alignment_dagster.core.keys import is_blank, lookalike, person_key, sha256_hex, validate_key
from alignment_dagster.core.storage import Storage
from alignment_dagster.data.records import BadRow, FieldError, iter_records, parse_choice, source_format
from alignment_dagster.human.labels import (
    HUMAN_LABEL_COLUMNS,
    empty_labels,
    guidance_lines,
    label_time,
    latest_per_annotator,
    utc_iso,
)

BACKEND = "file_queue"
DEFAULT_ANNOTATOR = "anonymous"
TASK_COLUMNS = ["pair_id", "priority", "route_reason", "category", "prompt", "response_a", "response_b"]
FORM_COLUMNS = ["choice", "annotator", "comment"]
MAX_ANNOTATOR_CHARS = 200
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class Batch:
    batch_id: str
    n_tasks: int
    keys: dict[str, str]  # "jsonl" / "csv" / "guidance" -> storage key


@dataclass
class ImportResult:
    file: str
    labels: pd.DataFrame  # human_labels contract, valid rows only
    errors: list[BadRow] = field(default_factory=list)
    n_rows: int = 0  # data rows read (valid, rejected and unlabelled)
    n_unlabelled: int = 0  # rows with an empty choice
    stored_key: str | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        return (
            f"{self.file}: {len(self.labels)} label(s) accepted, {len(self.errors)} row(s) rejected, "
            f"{self.n_unlabelled} unlabelled, {self.n_rows} row(s) read"
        )


def _guidance_markdown(lines: list[str]) -> str:
    principles = "\n".join(f"{i}. {line}" for i, line in enumerate(lines, start=1))
    return (
        "# Labelling guidance\n\n"
        "For each task, read the conversation (`prompt`) and the two candidate replies (`response_a`, "
        "`response_b`), and say which reply is better under these principles:\n\n"
        f"{principles}\n\n"
        "Answer in the `choice` column with `A`, `B` or `tie` (both equally good or equally bad). Put your "
        "name or id in `annotator` and anything worth knowing in `comment`. Leave `choice` empty for tasks "
        "you skip. Then import the file (JSONL or CSV) with the columns pair_id, choice, annotator, "
        "comment.\n"
    )


def _lines(text: str) -> list[str]:
    """Lines split at "\\n" only: str.splitlines() also splits at U+2028, U+0085 and more, legal inside JSON
    strings (and written raw by json.dumps(ensure_ascii=False))."""
    return text.split("\n")


def _text(rec: dict, name: str) -> str | None:
    """A field as stripped text; None when absent, null or empty."""
    value = rec.get(name)
    if value is None:
        return None
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise FieldError(name, f"expected text, got {type(value).__name__}")
    value = str(value).strip()
    return value or None


def spreadsheet_safe(value: object) -> object:
    """A CSV cell a spreadsheet shows as text: a leading `'` on text that would start a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def _annotator(rec: dict) -> str:
    annotator = _text(rec, "annotator") or DEFAULT_ANNOTATOR
    if len(annotator) > MAX_ANNOTATOR_CHARS or any(ch in annotator for ch in "\r\n\t"):
        raise FieldError("annotator", f"must be one line of at most {MAX_ANNOTATOR_CHARS} characters")
    hidden = lookalike(annotator)
    if is_blank(annotator) or (hidden and hidden.startswith("invisible")):
        raise FieldError("annotator", f"{annotator!r} has {hidden or 'nothing visible'}")
    return annotator


def _parse_row(rec: dict, known: set[str], labelled_at: str) -> dict | None:
    """One valid human_labels row, None for a not-yet-labelled row; raises FieldError otherwise."""
    pair_id = _text(rec, "pair_id")
    if pair_id is None:
        raise FieldError("pair_id", "missing")
    if pair_id not in known:
        raise FieldError("pair_id", f"{pair_id!r} is not in any batch of this queue")
    if "choice" not in rec:
        raise FieldError("choice", "missing")
    raw_choice = _text(rec, "choice")
    if raw_choice is None:
        return None
    choice = parse_choice(raw_choice)
    if choice is None:
        raise FieldError("choice", f"{raw_choice!r} is not one of A, B, tie")
    annotator = _annotator(rec)
    when = _text(rec, "labelled_at")
    if when is not None:
        try:
            when = label_time(when)
        except ValueError as e:
            raise FieldError("labelled_at", str(e)) from None
    comment = rec.get("comment")
    comment = (str(comment).strip() or None) if comment is not None else None
    return {
        "pair_id": pair_id,
        "choice": choice,
        "annotator": annotator,
        "labelled_at": when or labelled_at,
        "backend": BACKEND,
        "comment": comment,
    }


def _one_answer_each(
    parsed: list[tuple[int, dict]], name: str, errors: list[BadRow]
) -> list[tuple[int, dict]]:
    """One row per (pair, annotator): a repeat with the same choice is a duplicate (the first kept), different
    choices conflict (all rejected: the file does not say which answer stands); rejections go to `errors`."""
    by_key: dict[tuple[str, str], list[tuple[int, dict]]] = defaultdict(list)
    for row, label in parsed:
        by_key[(label["pair_id"], person_key(label["annotator"]))].append((row, label))
    keep: list[tuple[int, dict]] = []
    for (pair_id, _), items in by_key.items():
        annotator = items[0][1]["annotator"]
        rows = [r for r, _ in items]
        if len({lab["choice"] for _, lab in items}) > 1:
            for r, lab in items:
                others = ", ".join(str(o) for o in rows if o != r)
                errors.append(
                    BadRow(
                        name,
                        r,
                        "choice",
                        f"{lab['choice']!r} conflicts with row(s) {others} for "
                        f"pair {pair_id!r} by annotator {annotator!r}",
                    )
                )
            continue
        keep.append(items[0])
        errors.extend(
            BadRow(
                name, r, "pair_id", f"duplicate of row {rows[0]} (pair {pair_id!r}, annotator {annotator!r})"
            )
            for r in rows[1:]
        )
    return keep


class FileQueue:
    """Task batches and label files under `prefix` of a Storage (see the module docstring)."""

    def __init__(self, storage: Storage, prefix: str):
        self.storage = storage
        self.prefix = prefix.strip("/")

    def __repr__(self) -> str:
        return f"FileQueue({self.storage.uri!r}, {self.prefix!r})"

    def _key(self, *parts: str) -> str:
        return "/".join([self.prefix, *parts])

    # -- out: batches of tasks ------------------------------------------------------------------------
    def write_batch(
        self, tasks: pd.DataFrame, guidance: str | Sequence[str], batch_id: str | None = None
    ) -> Batch:
        """Write edge cases joined with their pairs as one batch (JSONL, CSV form, guidance).

        `tasks` needs pair_id, prompt, response_a, response_b; priority, route_reason and category are
        carried when present. Rows with `send == False` (audit pairs whose earlier human label is reused)
        are left out. Rows are written by priority. The default batch id is a hash of the pair ids and the
        guidance, so writing the same batch twice rewrites the same files.
        """
        need = {"pair_id", "prompt", "response_a", "response_b"} - set(tasks.columns)
        if need:
            raise ValueError(f"write_batch: tasks lack column(s) {sorted(need)}")
        df = tasks
        if "send" in df.columns:
            df = df[df["send"].astype(bool)]
        if "priority" in df.columns:
            df = df.sort_values(["priority", "pair_id"], kind="stable")
        if df["pair_id"].duplicated().any():
            raise ValueError(
                f"write_batch: pair_id {df.loc[df['pair_id'].duplicated(), 'pair_id'].iloc[0]!r} twice"
            )
        df = df.reindex(columns=TASK_COLUMNS).astype(object).where(lambda d: d.notna(), None)
        lines = guidance_lines(guidance)
        if batch_id is None:
            batch_id = "batch-" + sha256_hex(json.dumps([sorted(df["pair_id"]), lines]))[:12]
        validate_key(batch_id, "batch id")
        records = df.to_dict(orient="records")
        jsonl = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
        form = df.map(spreadsheet_safe).assign(**{c: "" for c in FORM_COLUMNS})
        keys = {
            "jsonl": self._key("batches", batch_id, "tasks.jsonl"),
            "csv": self._key("batches", batch_id, "tasks.csv"),
            "guidance": self._key("batches", batch_id, "GUIDANCE.md"),
        }
        # Guidance and CSV first, JSONL last: `tasks()` reads the JSONL, so a batch is visible only whole.
        self.storage.write_bytes(keys["guidance"], _guidance_markdown(lines).encode())
        self.storage.write_bytes(keys["csv"], form.to_csv(index=False).encode())
        self.storage.write_bytes(keys["jsonl"], jsonl)
        return Batch(batch_id, len(records), keys)

    def batch_ids(self) -> list[str]:
        keys = self.storage.list(self._key("batches"))
        return sorted({k.split("/")[-2] for k in keys if k.endswith("/tasks.jsonl")})

    def tasks(self) -> pd.DataFrame:
        """Every task of every batch, with its batch_id (a pair in several batches: its first batch)."""
        rows = []
        for bid in self.batch_ids():
            for line in _lines(self.storage.read_bytes(self._key("batches", bid, "tasks.jsonl")).decode()):
                if line.strip():
                    rows.append({**json.loads(line), "batch_id": bid})
        df = pd.DataFrame(rows, columns=[*TASK_COLUMNS, "batch_id"])
        return df.drop_duplicates("pair_id", keep="first").reset_index(drop=True)

    # -- in: label files ------------------------------------------------------------------------------
    def import_labels(
        self, raw: bytes, filename: str, *, labelled_at: datetime | str | None = None, store: bool = True
    ) -> ImportResult:
        """Validate a JSONL or CSV label file; keep the valid rows, report the others (module docstring).

        `filename` names the file in errors and picks the format by its extension. Valid labels are
        stored under `<prefix>/labels/` unless `store=False`.
        """
        name = filename.replace("\\", "/").rsplit("/", 1)[-1]
        result = ImportResult(file=name, labels=empty_labels())
        known = set(self.tasks()["pair_id"])
        default_time = utc_iso(labelled_at)
        parsed: list[tuple[int, dict]] = []
        try:
            source_format(name)
        except ValueError as e:
            result.errors.append(BadRow(name, None, None, str(e).removeprefix(f"{name}: ")))
            return result
        for row, rec, problem in iter_records(name, raw, required=("pair_id", "choice")):
            if row is not None:
                result.n_rows += 1
            if rec is None:
                result.errors.append(BadRow(name, row, None, problem or "unreadable row"))
                continue
            try:
                label = _parse_row(rec, known, default_time)
            except FieldError as e:
                result.errors.append(BadRow(name, row, e.field, str(e)))
                continue
            if label is None:
                result.n_unlabelled += 1
            else:
                parsed.append((row, label))

        keep = _one_answer_each(parsed, name, result.errors)
        result.errors.sort(key=lambda e: (e.row or 0, e.field or ""))
        keep.sort(key=lambda item: item[0])
        if keep:
            result.labels = pd.DataFrame([lab for _, lab in keep], columns=HUMAN_LABEL_COLUMNS)
            if store:
                stem = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "labels"
                key = self._key("labels", f"{stem[:80]}-{sha256_hex(raw)[:8]}.jsonl")
                body = "".join(json.dumps(lab, ensure_ascii=False) + "\n" for _, lab in keep)
                self.storage.write_bytes(key, body.encode())
                result.stored_key = key
        return result

    def labels(self, latest: bool = True) -> pd.DataFrame:
        """Stored labels (human_labels contract); `latest`: one row per pair and annotator, the newest."""
        rows = []
        for key in self.storage.list(self._key("labels")):
            if key.endswith(".jsonl"):
                rows += [json.loads(x) for x in _lines(self.storage.read_bytes(key).decode()) if x.strip()]
        df = pd.DataFrame(rows, columns=HUMAN_LABEL_COLUMNS)
        if latest and len(df):
            df = latest_per_annotator(df)
        return df.sort_values(["labelled_at", "pair_id", "annotator"], kind="stable").reset_index(drop=True)

    def pending(self) -> pd.DataFrame:
        """Tasks with no stored label yet, in priority order."""
        tasks = self.tasks()
        done = set(self.labels(latest=False)["pair_id"])
        out = tasks[~tasks["pair_id"].isin(done)]
        return out.sort_values(["priority", "pair_id"], kind="stable", na_position="last").reset_index(
            drop=True
        )
