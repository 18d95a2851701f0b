"""A cluster job's work list in storage: shards of cache keys, each key with the conversation its model call
takes, as one Parquet file named by its shards, written by the stage and read by every worker."""

from __future__ import annotations

import io
import json

import pandas as pd

from alignment_dagster.core.keys import sha256_hex
from alignment_dagster.core.storage import Storage

Message = dict[str, str]


def write_plan(storage: Storage, shards: list[list[str]], conversations: dict[str, list[Message]]) -> str:
    """Store `shards` (lists of cache keys, in order) with each key's conversation; the plan's key."""
    rows = [
        {"shard": n, "key": k, "conversation": json.dumps(conversations[k])}
        for n, shard in enumerate(shards)
        for k in shard
    ]
    key = f"compute/plans/{sha256_hex(json.dumps(shards))[:16]}.parquet"
    buf = io.BytesIO()
    pd.DataFrame(rows, columns=["shard", "key", "conversation"]).to_parquet(buf, index=False)
    storage.write_bytes(key, buf.getvalue())
    return key


def read_plan(storage: Storage, key: str) -> list[tuple[list[str], list[list[Message]]]]:
    """The shards of a stored plan: (keys, conversations) each, in shard order."""
    df = pd.read_parquet(io.BytesIO(storage.read_bytes(key)))
    shards: list[tuple[list[str], list[list[Message]]]] = []
    for _, group in df.groupby("shard", sort=True):
        shards.append((list(group["key"]), [json.loads(c) for c in group["conversation"]]))
    return shards
