"""Content-keyed results of model calls, persisted in Parquet shards in pipeline storage.

Long stages (judging, sampling) compute keys from exactly what determines a result, look them up, and
write each finished batch of new results as its own shard before starting the next: a killed stage
resumes from its last finished shard, and re-running a finished stage makes no model calls.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pandas as pd

from alignment_dagster.core.keys import sha256_hex
from alignment_dagster.core.storage import Storage


class ShardCache:
    """Entries under `prefix` of `storage`; with storage None, in memory only (one run, no resume)."""

    def __init__(self, storage: Storage | None, prefix: str):
        self.storage = storage
        self.prefix = prefix
        self._entries: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        if self._entries is None:
            entries: dict[str, Any] = {}
            for key in self.storage.list(self.prefix) if self.storage is not None else []:
                if key.rsplit("/", 1)[-1].startswith("shard-") and key.endswith(".parquet"):
                    df = pd.read_parquet(io.BytesIO(self.storage.read_bytes(key)))
                    entries.update(zip(df["key"], map(json.loads, df["value"]), strict=False))
            self._entries = entries
        return self._entries

    def __len__(self) -> int:
        return len(self._load())

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        entries = self._load()
        return {k: entries[k] for k in keys if k in entries}

    def put_many(self, values: dict[str, Any]) -> None:
        """Write one shard (atomically) and remember its entries."""
        if not values:
            return
        if self.storage is None:
            self._load().update(values)
            return
        keys = sorted(values)
        df = pd.DataFrame({"key": keys, "value": [json.dumps(values[k]) for k in keys]})
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        self.storage.write_bytes(self.shard_key(keys), buf.getvalue())
        self._load().update(values)

    def shard_key(self, keys: list[str]) -> str:
        """Where the shard of exactly these keys is stored: named by its keys, so a shard computed twice (a
        retried worker) is the same object written again, and every entry is stored once."""
        return f"{self.prefix}/shard-{sha256_hex(''.join(sorted(keys)))[:16]}.parquet"

    def has_shard(self, keys: list[str]) -> bool:
        return self.storage is not None and self.storage.exists(self.shard_key(keys))

    def refresh(self) -> None:
        """Forget what was read, so shards written by other processes (cluster workers) are seen."""
        if self.storage is not None:
            self._entries = None

    def shard_count(self) -> int:
        if self.storage is None:
            return 0
        return sum(1 for k in self.storage.list(self.prefix) if k.rsplit("/", 1)[-1].startswith("shard-"))
