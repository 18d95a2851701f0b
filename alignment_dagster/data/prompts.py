"""Prompt pool: load prompts from JSONL/CSV/Parquet sources, normalise, deduplicate, split.

Plain functions; the `prompt_pool` asset only wires them to configuration and storage.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources

import pandas as pd

from alignment_dagster.core.keys import is_blank, sha256_hex
from alignment_dagster.core.reporting import StageReport, bullet_list
from alignment_dagster.data.records import BadRow, FieldError, category_field, read_records, text_field

PROMPT_COLUMNS = ["prompt_id", "prompt", "category", "split", "source"]
MAX_PROMPT_CHARS = 8000
STARTER_SOURCES = ("package://helpful_prompts.jsonl", "package://red_team_prompts.jsonl.gz")


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

    def report(self) -> StageReport:
        report = StageReport().add(
            n_prompts=len(self.prompts),
            rows_read=self.rows_read,
            bad_rows=len(self.bad_rows),
            exact_duplicates=self.exact_duplicates,
            normalised_duplicates=self.normalised_duplicates,
            empty=self.empty,
        )
        report.detail("by_category", self.counts_by_category(), "category")
        report.detail("by_split", self.counts_by_split(), "split")
        report.notes["bad_row_examples"] = bullet_list(self.bad_rows[:10])
        if self.bad_rows:
            report.text("bad_rows.json", json.dumps([str(b) for b in self.bad_rows], indent=1))
        return report.table(
            "prompt_pool", self.prompts, ["prompt_id", "category", "split", "prompt"], artifact=False
        )


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


def read_package_data(name: str) -> bytes:
    return resources.files("alignment_dagster.data").joinpath("packaged", name).read_bytes()


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

    A source is a path, `s3://` URI or `package://<file>` (starter data shipped with the package); one that
    cannot be read is a bad row of its own and the others still load. Rows need a `prompt` field (string);
    `category` is optional (slugified; default `default_category`). The first occurrence of a prompt wins;
    later exact or normalised duplicates are counted and dropped; prompts that show nothing (whitespace or
    zero-width characters only) are counted as empty.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    pool = PromptPool(prompts=pd.DataFrame(columns=PROMPT_COLUMNS))
    seen_raw: set[str] = set()
    seen_key: set[str] = set()
    rows: list[dict] = []

    def read(uri: str) -> bytes:
        return (
            read_package_data(uri.removeprefix("package://"))
            if uri.startswith("package://")
            else read_bytes(uri)
        )

    for uri in sources:
        for row, rec, error in read_records(uri, read):
            if row is not None:  # None: a problem of the whole file, not a row
                pool.rows_read += 1
            if rec is None:
                pool.bad_rows.append(BadRow(uri, row, None, error or "unreadable row"))
                continue
            try:
                text = text_field(rec, "prompt", max_prompt_chars)
                category = category_field(rec, default_category)
            except FieldError as e:
                pool.bad_rows.append(BadRow(uri, row, e.field, str(e)))
                continue
            normalised = normalise_prompt(text)
            if _duplicate(pool, text, normalised, seen_raw, seen_key):
                continue
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


def _duplicate(pool: PromptPool, text: str, normalised: str, seen_raw: set[str], seen_key: set[str]) -> bool:
    """Whether a prompt is left out (empty, or in the pool already, as is or up to case and spacing)."""
    if is_blank(normalised):
        pool.empty += 1
        return True
    if text in seen_raw:
        pool.exact_duplicates += 1
        return True
    seen_raw.add(text)
    key = dedup_key(normalised)
    if key in seen_key:
        pool.normalised_duplicates += 1
        return True
    seen_key.add(key)
    return False
