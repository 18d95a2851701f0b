"""The one reader for every input table (prompt sources, pair files, label files): JSONL, CSV or Parquet,
optionally gzip-compressed, one record at a time, with one bad-row type and one A/B/tie parser.

A bad row costs only itself: it is reported as a `BadRow` naming the file, the row and (where known) the
field, and the reader goes on. Row numbers count as a user finds the row: for JSONL the line in the file
(blank lines included), for CSV the data row under the header, for Parquet the record.

Everything is bounded (`read_records`): the file as read (`core.storage.read_uri`: regular files only,
256 MiB), its decompressed size (1 GiB, then the rows before the cut are kept), JSON nesting (a row nested
past Python's recursion limit, or an integer past its digit limit, is that row's error), and CSV quoting (a
quote that is never closed is that row's error, and reading resumes at the next line instead of the quote
swallowing every row after it).
"""

from __future__ import annotations

import csv
import io
import json
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq

from alignment_dagster.core.keys import checked_slug
from alignment_dagster.core.redaction import redact_text
from alignment_dagster.core.storage import size_text

GZIP_MAGIC = b"\x1f\x8b"
MAX_DECOMPRESSED_BYTES = 1024 * 1024 * 1024
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
    try:
        return checked_slug(raw, "category")
    except ValueError as e:
        raise FieldError("category", str(e).removeprefix("category ")) from None


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


def _gunzip(raw: bytes, max_bytes: int) -> tuple[bytes, str | None]:
    """The decompressed bytes (at most `max_bytes`) and why they stop early: "truncated" (the stream was cut
    short), "limit" (it decompresses to more) or None; raises zlib.error for data that is not gzip."""
    out: list[bytes] = []
    total = 0
    # Members one after another; trailing bytes that are no member are ignored, as gzip(1) does.
    while raw[:2] == GZIP_MAGIC:
        member = zlib.decompressobj(wbits=31)
        chunk = member.decompress(raw, max_bytes - total + 1)
        if len(chunk) > max_bytes - total:
            out.append(chunk[: max_bytes - total])
            return b"".join(out), "limit"
        out.append(chunk)
        total += len(chunk)
        if not member.eof:
            return b"".join(out), "truncated"
        raw = member.unused_data
    return b"".join(out), None


def _csv_cells(text: str) -> Iterator[tuple[list[str] | None, str | None]]:
    """(cells or None, error) per CSV record, quotes parsed strictly. A quote that is never closed, or is
    followed by text, is the error of the record it opens in, and reading resumes at that record's next
    line: a lenient parser would read every row after it into one cell."""
    lines = list(io.StringIO(text, newline=""))  # the lines the csv module itself reads
    start = 0
    while start < len(lines):
        reader = csv.reader(iter(lines[start:]), strict=True)
        done = 0  # lines of lines[start:] taken by whole records
        try:
            for cells in reader:
                yield cells, None
                done = reader.line_num
            return
        except csv.Error as e:
            yield None, f"bad quoting ({e}): a quote opened in this row is not closed where it should be"
            start += done + 1


def _csv_records(raw: bytes, required: Sequence[str]) -> Iterator[Record]:
    # -sig: spreadsheet programs put a BOM before the header. surrogateescape instead of a strict decode: a
    # byte that is not UTF-8 then costs only the row it is in.
    text = raw.decode("utf-8-sig", errors="surrogateescape")
    # A cell may be as long as the file: the length checks report an over-long value by row, whereas
    # csv's own limit (128 KiB) would abort the whole file.
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))
    records = (r for r in _csv_cells(text) if r[0] != [])  # blank lines are no rows
    header, problem = next(records, ([], None))
    if problem or UNDECODED.search(",".join(header or [])):
        yield None, None, f"header: {problem}" if problem else "header is not UTF-8 text"
        return
    missing = [c for c in required if c not in header]
    if missing:
        yield None, None, f"missing column(s) {', '.join(missing)} (header: {', '.join(header) or 'empty'})"
        return
    for i, (cells, problem) in enumerate(records, start=1):
        if cells is None:
            yield i, None, problem
        elif len(cells) > len(header):
            yield i, None, "more cells than header columns"
        else:
            rec = {h: cells[j] if j < len(cells) else None for j, h in enumerate(header)}
            column = undecoded_column(rec)
            yield (i, None, f"not UTF-8 text in column {column!r}") if column else (i, rec, None)


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
        except RecursionError:
            yield line_no, None, "invalid JSON (nested too deeply)"
            continue
        except ValueError as e:  # an integer past Python's digit limit
            yield line_no, None, f"invalid JSON ({e})"
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


def iter_records(
    uri: str, raw: bytes, required: Sequence[str] = (), max_decompressed: int = MAX_DECOMPRESSED_BYTES
) -> Iterable[Record]:
    """(row, record or None, error) for each data row of a file; row None reports the whole file.

    `uri` picks the format by its name (`source_format`). `required`: CSV columns without which the file
    is unusable (reported once, for the file). A gzip stream that is cut short, or decompresses to more
    than `max_decompressed` bytes, is read up to the cut: the whole rows before it, then `truncated after
    row N` (or the limit and N).
    """
    fmt = source_format(uri)
    stop = None
    if raw[:2] == GZIP_MAGIC:
        try:
            raw, stop = _gunzip(raw, max_decompressed)
        except zlib.error as e:
            yield None, None, f"not readable as gzip ({e})"
            return
    limit = f"decompresses to more than {size_text(max_decompressed)}"
    if fmt == "parquet":
        if stop == "limit":
            yield None, None, limit
            return
        yield from _parquet_records(raw)
        return
    if stop:  # the last line stops mid-row: keep the whole lines before it
        raw = raw[: raw.rfind(b"\n") + 1]
    row = 0
    for row, rec, error in _csv_records(raw, required) if fmt == "csv" else _jsonl_records(raw):
        yield row, rec, error
    if stop and row is not None:  # None: the file was already reported as unreadable
        yield (
            None,
            None,
            f"truncated after row {row}" if stop == "truncated" else f"{limit}: read up to row {row}",
        )


def _unreadable(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return redact_text(str(error) or type(error).__name__)


def read_records(
    uri: str,
    read_bytes: Callable[[str], bytes],
    required: Sequence[str] = (),
    max_decompressed: int = MAX_DECOMPRESSED_BYTES,
) -> Iterator[Record]:
    """`iter_records` of the file `read_bytes(uri)` returns. A file that cannot be read at all (unknown
    format, missing, no permission, not a regular file, over the size limit, a storage error) is one
    file-level record, `cannot read file (...)`, so the caller's other files still load."""
    try:
        source_format(uri)
    except ValueError as e:
        yield None, None, str(e).removeprefix(f"{uri}: ")
        return
    try:
        raw = read_bytes(uri)
    except Exception as e:  # noqa: BLE001 - whatever stops this file costs only this file
        yield None, None, f"cannot read file ({_unreadable(e)})"
        return
    yield from iter_records(uri, raw, required, max_decompressed)
