"""The one reader for every input table (prompt sources, pair files, label files): JSONL, CSV or Parquet,
optionally gzip-compressed, one record at a time, with one bad-row type and one A/B/tie parser.

A bad row costs only itself: it is reported as a `BadRow` naming the file, the row and (where known) the
field, and the reader goes on. Row numbers count as a user finds the row: for JSONL the line in the file
(blank lines included), for CSV the data row under the header, for Parquet the record.
"""

from __future__ import annotations

import csv
import io
import json
import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq

from alignment_dagster.core.keys import slugify

GZIP_MAGIC = b"\x1f\x8b"
UNDECODED = re.compile("[\udc80-\udcff]")  # what decode(errors="surrogateescape") makes of a non-UTF-8 byte
CHOICE_NAMES = {"a": "A", "b": "B", "tie": "tie"}
FORMATS = ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".csv", "csv"), (".parquet", "parquet"))

Record = tuple[
    int | None, dict | None, str | None
]  # (row, record or None, why unreadable); row None: the file


@dataclass(frozen=True)
class BadRow:
    """One rejected row (or, with row None, a whole file): where it is and what is wrong."""

    source: str
    row: int | None  # as `iter_records` numbers rows; None: the whole file
    field: str | None
    message: str

    def __str__(self) -> str:
        parts = [self.source] + ([f"row {self.row}"] if self.row is not None else [])
        return ": ".join(parts + ([self.field] if self.field else []) + [self.message])


class FieldError(ValueError):
    """A row's field is wrong; readers turn it into a `BadRow` for that row."""

    def __init__(self, field: str | None, message: str):
        self.field = field
        super().__init__(message)


def text_field(rec: dict, name: str, max_chars: int | None = None) -> str:
    """A required string field of a record; FieldError naming it when missing, not text or too long."""
    value = rec.get(name)
    if value is None:
        raise FieldError(name, "missing")
    if not isinstance(value, str):
        raise FieldError(name, f"expected a string, got {type(value).__name__}")
    if max_chars is not None and len(value) > max_chars:
        raise FieldError(name, f"{len(value)} characters, over the {max_chars} limit")
    return value


def category_field(rec: dict, default: str) -> str:
    """A record's optional category, slugified as the prompt pool stores it (so routing and `applies_to`
    match it); `default` when absent or blank."""
    raw = rec.get("category")
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return default
    if not isinstance(raw, str):
        raise FieldError("category", f"expected a string, got {type(raw).__name__}")
    slug = slugify(raw)
    if not slug:
        raise FieldError("category", f"{raw!r} has no letters or digits")
    return slug


def parse_choice(value: object) -> str | None:
    """A/B/tie from a human's answer, case and surrounding spaces ignored; None if it is not one of them."""
    if not isinstance(value, str):
        return None
    return CHOICE_NAMES.get(value.strip().lower())


def source_format(uri: str) -> str:
    """jsonl, csv or parquet from the file name (a trailing .gz is allowed); ValueError naming the file."""
    name = PurePosixPath(uri.split("?")[0]).name.lower().removesuffix(".gz")
    for ext, fmt in FORMATS:
        if name.endswith(ext):
            return fmt
    raise ValueError(f"{uri}: unknown file format (use .jsonl, .csv or .parquet, optionally .gz)")


def undecoded_column(rec: dict) -> str | None:
    """The first column holding bytes that were not UTF-8 (kept as lone surrogates by surrogateescape)."""
    return next((k for k, v in rec.items() if isinstance(v, str) and UNDECODED.search(v)), None)


def _gunzip(raw: bytes) -> tuple[bytes, bool]:
    """The decompressed bytes and whether the stream was cut short; raises zlib.error for non-gzip data."""
    out = []
    # Members one after another; trailing bytes that are no member are ignored, as gzip(1) does.
    while raw[:2] == GZIP_MAGIC:
        member = zlib.decompressobj(wbits=31)
        out.append(member.decompress(raw))
        if not member.eof:
            return b"".join(out), True
        raw = member.unused_data
    return b"".join(out), False


def _csv_records(raw: bytes, required: Sequence[str]) -> Iterator[Record]:
    # -sig: spreadsheet programs put a BOM before the header. surrogateescape instead of a strict decode: a
    # byte that is not UTF-8 then costs only the row it is in.
    text = raw.decode("utf-8-sig", errors="surrogateescape")
    # A cell may be as long as the file: the length checks report an over-long value by row, whereas
    # csv's own limit (128 KiB) would abort the whole file.
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    if UNDECODED.search(",".join(header)):
        yield None, None, "header is not UTF-8 text"
        return
    missing = [c for c in required if c not in header]
    if missing:
        yield None, None, f"missing column(s) {', '.join(missing)} (header: {', '.join(header) or 'empty'})"
        return
    for i, rec in enumerate(reader, start=1):
        if None in rec:
            yield i, None, "more cells than header columns"
        elif column := undecoded_column(rec):
            yield i, None, f"not UTF-8 text in column {column!r}"
        else:
            yield i, rec, None


def _jsonl_records(raw: bytes) -> Iterator[Record]:
    # Split at "\n" only: str.splitlines() also splits at U+2028, U+0085 and more, legal inside JSON strings.
    for line_no, chunk in enumerate(raw.split(b"\n"), start=1):
        if not chunk.strip():
            continue
        try:
            line = chunk.decode("utf-8-sig")
        except UnicodeDecodeError:
            yield line_no, None, "not UTF-8 text"
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            yield line_no, None, f"invalid JSON ({e.msg} at column {e.colno})"
            continue
        if not isinstance(rec, dict):
            yield line_no, None, f"expected a JSON object, got {type(rec).__name__}"
            continue
        yield line_no, rec, None


def _parquet_records(raw: bytes) -> Iterator[Record]:
    try:
        table = pq.read_table(io.BytesIO(raw))
    except pa.ArrowException as e:
        yield None, None, f"not readable as Parquet ({e})"
        return
    for i, rec in enumerate(table.to_pylist(), start=1):
        yield i, rec, None


def iter_records(uri: str, raw: bytes, required: Sequence[str] = ()) -> Iterable[Record]:
    """(row, record or None, error) for each data row of a file; row None reports the whole file.

    `uri` picks the format by its name (`source_format`). `required`: CSV columns without which the file
    is unusable (reported once, for the file). A truncated gzip is read up to the cut: the whole rows
    before it, then `truncated after row N`.
    """
    fmt = source_format(uri)
    truncated = False
    if raw[:2] == GZIP_MAGIC:
        try:
            raw, truncated = _gunzip(raw)
        except zlib.error as e:
            yield None, None, f"not readable as gzip ({e})"
            return
    if fmt == "parquet":
        yield from _parquet_records(raw)
        return
    if truncated:  # the last line stops mid-row: keep the whole lines before it
        raw = raw[: raw.rfind(b"\n") + 1]
    row = 0
    for row, rec, error in _csv_records(raw, required) if fmt == "csv" else _jsonl_records(raw):
        yield row, rec, error
    if truncated and row is not None:  # None: the file was already reported as unreadable
        yield None, None, f"truncated after row {row}"
