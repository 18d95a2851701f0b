"""Look for a secret everywhere a run leaves text, as an attacker with read access to the deployment would.

`scan(needles, paths=..., texts=...)` walks every file under the given paths: SQLite databases table by table
and cell by cell (Dagster's run storage keeps job snapshots zlib-compressed, its event log as JSON text;
MLflow's store keeps params, tags and metrics), Parquet files value by value, gzip/zlib files decompressed,
everything else as raw bytes (compute logs, artifacts, write-ahead logs). `texts` are captured streams
(stdout, stderr). Other stores join by passing their folder (a Ray session dir, say) or a dump as a text.
"""

from __future__ import annotations

import gzip
import sqlite3
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

SQLITE_MAGIC = b"SQLite format 3\x00"


def _inflated(data: bytes) -> Iterator[bytes]:
    """`data`, and what it decompresses to when it is zlib or gzip data (Dagster's snapshots are zlib)."""
    yield data
    for inflate in (zlib.decompress, gzip.decompress):
        try:
            yield inflate(data)
        except (zlib.error, OSError, EOFError):
            continue


def _cells(db: Path) -> Iterator[tuple[str, bytes]]:
    con = sqlite3.connect(f"file:{db}?mode=ro&immutable=1", uri=True)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            cursor = con.execute(f'SELECT * FROM "{table}"')
            columns = [d[0] for d in cursor.description]
            for row in cursor:
                for column, value in zip(columns, row, strict=True):
                    if isinstance(value, str):
                        yield f"{table}.{column}", value.encode("utf-8", "surrogateescape")
                    elif isinstance(value, bytes):
                        yield f"{table}.{column}", value
    finally:
        con.close()


def _parquet_values(path: Path) -> bytes:
    import pyarrow.parquet as pq

    return repr(pq.read_table(path).to_pylist()).encode("utf-8", "surrogateescape")


def _file_hits(path: Path, needles: list[bytes]) -> list[str]:
    data = path.read_bytes()
    chunks: list[tuple[str, bytes]] = [("", d) for d in _inflated(data)]
    if data.startswith(SQLITE_MAGIC):
        chunks += [(where, d) for where, cell in _cells(path) for d in _inflated(cell)]
    if data.startswith(b"PAR1"):
        chunks.append(("values", _parquet_values(path)))
    hits = []
    for where, chunk in chunks:
        for needle in needles:
            if needle in chunk:
                hits.append(f"{path}{':' + where if where else ''}")
    return sorted(set(hits))


def scan(
    needles: str | Iterable[str], *, paths: Iterable[Path] = (), texts: Mapping[str, str] | None = None
) -> list[str]:
    """Every place any of `needles` appears: `<file>[:<table>.<column>]` or a text's name; [] if none."""
    wanted = [needles] if isinstance(needles, str) else list(needles)
    encoded = [n.encode() for n in wanted]
    hits = [name for name, text in (texts or {}).items() if any(n in text for n in wanted)]
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            hits += _file_hits(f, encoded)
    return hits
