"""A lock around first-use sections of a shared metadata store (creating an MLflow experiment or the parent
run of a Dagster run), so concurrent processes create each thing once.

SQLite: a file lock beside the database (every writer is on this machine). PostgreSQL: a session-level
advisory lock in the database itself, so processes on other hosts (Kubernetes run workers, step pods) wait
too. Other stores (an MLflow server over HTTP): no lock. Both locks are re-entrant within one object.
"""

from __future__ import annotations

import hashlib
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from filelock import FileLock


class AdvisoryLock:
    """`pg_advisory_lock` on one connection, held until the outermost `with` ends."""

    def __init__(self, url: str, name: str):
        self.url = url
        # Advisory locks take a bigint: the first 8 bytes of the name's SHA-256, signed.
        self.key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        self._conn: Any = None
        self._depth = 0

    def __enter__(self) -> AdvisoryLock:
        if self._depth == 0:
            from sqlalchemy import create_engine, text

            engine = create_engine(self.url, poolclass=_null_pool())
            self._conn = engine.connect()
            self._conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
        self._depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            from sqlalchemy import text

            try:
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            finally:
                self._conn.close()  # closing the session releases its advisory locks in any case
                self._conn = None


def _null_pool() -> Any:
    from sqlalchemy.pool import NullPool

    return NullPool


def store_lock(uri: str, name: str) -> AbstractContextManager | None:
    """The lock for section `name` of the store at `uri` (an SQLAlchemy URL as MLflow takes it), or None."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(db) + ".lock", timeout=300)
    if uri.startswith(("postgresql://", "postgresql+")):
        return AdvisoryLock(uri, name)
    return None
