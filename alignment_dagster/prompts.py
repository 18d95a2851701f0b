"""Prompt pool: load prompts from JSONL/CSV/Parquet sources, normalise, deduplicate, split.

Plain functions; the `prompt_pool` asset only wires them to configuration and storage.
"""

from __future__ import annotations

import csv
import io
import json
import re
import unicodedata
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import PurePosixPath

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from alignment_dagster.keys import sha256_hex, slugify

PROMPT_COLUMNS = ["prompt_id", "prompt", "category", "split", "source"]
MAX_PROMPT_CHARS = 8000
STARTER_SOURCES = ("package://helpful_prompts.jsonl", "package://red_team_prompts.jsonl.gz")
GZIP_MAGIC = b"\x1f\x8b"
UNDECODED = re.compile("[\udc80-\udcff]")  # what decode(errors="surrogateescape") makes of a non-UTF-8 byte


@dataclass(frozen=True)
class BadRow:
    source: str
    row: int | None  # 1-based data row (header excluded), as a user counts rows; None: the whole file
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.source if self.row is None else f"{self.source}: row {self.row}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


@dataclass
class PromptPool:
    prompts: pd.DataFrame
    bad_rows: list[BadRow] = field(default_factory=list)
    exact_duplicates: int = 0
    normalised_duplicates: int = 0
    empty: int = 0
    rows_read: int = 0

    def counts_by_category(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.prompts["category"].value_counts().sort_index().items()}

    def counts_by_split(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.prompts["split"].value_counts().sort_index().items()}


def normalise_prompt(text: str) -> str:
    """NFC, strip, and collapse every whitespace run to one space."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def dedup_key(normalised: str) -> str:
    return normalised.casefold()


def prompt_id_for(normalised: str) -> str:
    """Stable id: the same prompt (up to case and whitespace) always gets the same id."""
    return sha256_hex(dedup_key(normalised))[:16]


def split_for(prompt_id: str, eval_fraction: float, salt: str = "") -> str:
    """Deterministic train/eval assignment from a hash, so a prompt never changes split between runs."""
    bucket = int(sha256_hex(f"{salt}:{prompt_id}")[:8], 16) / 0x1_0000_0000
    return "eval" if bucket < eval_fraction else "train"


def _source_format(uri: str) -> str:
    name = PurePosixPath(uri.split("?")[0]).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for ext, fmt in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".csv", "csv"), (".parquet", "parquet")):
        if name.endswith(ext):
            return fmt
    raise ValueError(f"{uri}: unknown prompt file format (use .jsonl, .csv or .parquet, optionally .gz)")


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


def undecoded_column(rec: dict) -> str | None:
    """The first column holding bytes that were not UTF-8 (kept as lone surrogates by surrogateescape)."""
    return next((k for k, v in rec.items() if isinstance(v, str) and UNDECODED.search(v)), None)


def _csv_records(raw: bytes) -> Iterable[tuple[int | None, dict | None, str | None]]:
    # surrogateescape instead of a strict decode: a bad byte then costs only the row it is in.
    text = raw.decode("utf-8-sig", errors="surrogateescape")
    # A cell may be as long as the file: the length checks report an over-long value by row, whereas
    # csv's own limit (128 KiB) would abort the whole file.
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))
    reader = csv.DictReader(io.StringIO(text))
    if UNDECODED.search(",".join(reader.fieldnames or [])):
        yield None, None, "header is not UTF-8 text"
        return
    for i, rec in enumerate(reader, start=1):
        if None in rec:  # more cells than header columns
            yield i, None, "more cells than header columns"
        elif column := undecoded_column(rec):
            yield i, None, f"not UTF-8 text in column {column!r}"
        else:
            yield i, rec, None


def _jsonl_records(raw: bytes) -> Iterable[tuple[int | None, dict | None, str | None]]:
    row = 0
    # Split at "\n" only: str.splitlines() also splits at U+2028, U+0085 and more, legal inside JSON strings.
    for chunk in raw.split(b"\n"):
        if not chunk.strip():
            continue
        row += 1
        try:
            line = chunk.decode("utf-8-sig")
        except UnicodeDecodeError:
            yield row, None, "not UTF-8 text"
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            yield row, None, f"invalid JSON ({e.msg} at column {e.colno})"
            continue
        if not isinstance(rec, dict):
            yield row, None, f"expected a JSON object, got {type(rec).__name__}"
            continue
        yield row, rec, None


def _iter_records(uri: str, raw: bytes) -> Iterable[tuple[int | None, dict | None, str | None]]:
    """Yield (row number, record or None, error) for each data row of a source file (row None: the file)."""
    fmt = _source_format(uri)
    truncated = False
    if raw[:2] == GZIP_MAGIC:
        try:
            raw, truncated = _gunzip(raw)
        except zlib.error as e:
            yield None, None, f"not readable as gzip ({e})"
            return
    if fmt == "parquet":
        try:
            table = pq.read_table(io.BytesIO(raw))
        except pa.ArrowException as e:
            yield None, None, f"not readable as Parquet ({e})"
            return
        for i, rec in enumerate(table.to_pylist(), start=1):
            yield i, rec, None
        return
    if truncated:  # the last line stops mid-row: keep the whole lines before it
        raw = raw[: raw.rfind(b"\n") + 1]
    row = 0
    for row, rec, error in (_csv_records(raw) if fmt == "csv" else _jsonl_records(raw)):
        yield row, rec, error
    if truncated and row is not None:  # None: the file was already reported as unreadable
        yield None, None, f"truncated after row {row}"


def read_package_data(name: str) -> bytes:
    return resources.files("alignment_dagster.data").joinpath(name).read_bytes()


def build_prompt_pool(
    sources: list[str],
    read_bytes: Callable[[str], bytes],
    *,
    default_category: str = "general",
    eval_fraction: float = 0.2,
    split_salt: str = "",
    max_prompt_chars: int = MAX_PROMPT_CHARS,
) -> PromptPool:
    """Load every source and return the deduplicated, split pool plus a report of what was dropped.

    A source is a path, `s3://` URI or `package://<file>` (starter data shipped with the package).
    Rows need a `prompt` field (string); `category` is optional (slugified; default `default_category`).
    The first occurrence of a prompt wins; later exact or normalised duplicates are counted and dropped.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    pool = PromptPool(prompts=pd.DataFrame(columns=PROMPT_COLUMNS))
    seen_raw: set[str] = set()
    seen_key: set[str] = set()
    rows: list[dict] = []
    for uri in sources:
        raw = read_package_data(uri.removeprefix("package://")) if uri.startswith("package://") else read_bytes(uri)
        for row, rec, error in _iter_records(uri, raw):
            if row is not None:  # None: a problem of the whole file, not a row
                pool.rows_read += 1
            if rec is None:
                pool.bad_rows.append(BadRow(uri, row, None, error or "unreadable row"))
                continue
            text = rec.get("prompt")
            if text is None:
                pool.bad_rows.append(BadRow(uri, row, "prompt", "missing"))
                continue
            if not isinstance(text, str):
                pool.bad_rows.append(BadRow(uri, row, "prompt", f"expected a string, got {type(text).__name__}"))
                continue
            if len(text) > max_prompt_chars:
                pool.bad_rows.append(
                    BadRow(uri, row, "prompt", f"{len(text)} characters, over the {max_prompt_chars} limit")
                )
                continue
            category_raw = rec.get("category")
            if category_raw is not None and not isinstance(category_raw, str):
                pool.bad_rows.append(
                    BadRow(uri, row, "category", f"expected a string, got {type(category_raw).__name__}")
                )
                continue
            category = slugify(category_raw) if category_raw and category_raw.strip() else default_category
            if not category:
                pool.bad_rows.append(BadRow(uri, row, "category", f"{category_raw!r} has no letters or digits"))
                continue
            normalised = normalise_prompt(text)
            if not normalised:
                pool.empty += 1
                continue
            if text in seen_raw:
                pool.exact_duplicates += 1
                continue
            seen_raw.add(text)
            key = dedup_key(normalised)
            if key in seen_key:
                pool.normalised_duplicates += 1
                continue
            seen_key.add(key)
            pid = prompt_id_for(normalised)
            rows.append(
                {
                    "prompt_id": pid,
                    "prompt": normalised,
                    "category": category,
                    "split": split_for(pid, eval_fraction, split_salt),
                    "source": uri,
                }
            )
    if rows:
        pool.prompts = pd.DataFrame(rows, columns=PROMPT_COLUMNS)
    return pool

