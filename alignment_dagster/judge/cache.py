"""Judgment cache: one probability per (judge model, template version, principle text, pair as shown).

Entries live in Parquet shards under `cache/judgments/<judge>/<template version>/` in pipeline storage.
Each finished batch of model calls is written as its own shard before the next batch starts, so a killed
stage resumes from the last finished shard, and a constitution edit re-judges only principles whose text
changed (weights and thresholds are not in the key, so changing them re-aggregates with zero calls).
"""

from __future__ import annotations

import io

import pandas as pd

from alignment_dagster.keys import canonical_json, sha256_hex, slugify
from alignment_dagster.storage import Storage

def shown_pair_hash(prompt: str, first: str, second: str) -> str:
    """Hash of a pair *as shown* to the judge (first reply in slot A).

    The order is part of the key through which reply is shown first: the backward order of (x, a, b) is
    the forward order of (x, b, a), so a pair imported twice with its replies swapped costs nothing extra.
    """
    return sha256_hex(canonical_json([prompt, first, second]))


def judgment_key(judge_id: str, template_version: str, principle_text: str, prompt: str, first: str, second: str) -> str:
    return sha256_hex(
        canonical_json(
            {"judge": judge_id, "template": template_version, "principle": sha256_hex(principle_text),
             "shown": shown_pair_hash(prompt, first, second)}
        )
    )[:32]


class JudgmentCache:
    def __init__(self, storage: Storage, judge_id: str, template_version: str):
        self.storage = storage
        self.judge_id = judge_id
        self.template_version = template_version
        judge_dir = f"{slugify(judge_id)[:60] or 'judge'}-{sha256_hex(judge_id)[:8]}"
        self.prefix = f"cache/judgments/{judge_dir}/{slugify(template_version) or 'template'}"
        self._entries: dict[str, float] | None = None

    def _load(self) -> dict[str, float]:
        if self._entries is None:
            entries: dict[str, float] = {}
            for key in self.storage.list(self.prefix):
                if key.endswith(".parquet"):
                    df = pd.read_parquet(io.BytesIO(self.storage.read_bytes(key)))
                    entries.update(zip(df["key"], df["p_first"].astype(float)))
            self._entries = entries
        return self._entries

    def __len__(self) -> int:
        return len(self._load())

    def get_many(self, keys: list[str]) -> dict[str, float]:
        entries = self._load()
        return {k: entries[k] for k in keys if k in entries}

    def put_many(self, values: dict[str, float]) -> None:
        """Write one shard (atomically) and remember its entries."""
        if not values:
            return
        keys = sorted(values)
        df = pd.DataFrame({"key": keys, "p_first": [values[k] for k in keys]})
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        self.storage.write_bytes(f"{self.prefix}/shard-{sha256_hex(''.join(keys))[:16]}.parquet", buf.getvalue())
        self._load().update(values)
