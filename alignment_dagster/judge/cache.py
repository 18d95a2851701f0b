"""Judgment cache: one probability per (judge model, template version, principle text, pair as shown).

A constitution edit re-judges only principles whose text changed: weights and thresholds are not in the
key, so changing them re-aggregates with zero calls. Shards make a killed stage resume (see shard_cache).
"""

from __future__ import annotations

from alignment_dagster.core.keys import canonical_json, sha256_hex, slugify
from alignment_dagster.core.shard_cache import ShardCache
from alignment_dagster.core.storage import Storage


def shown_pair_hash(prompt: str, first: str, second: str) -> str:
    """Hash of a pair *as shown* to the judge (first reply in slot A).

    The order is part of the key through which reply is shown first: the backward order of (x, a, b) is
    the forward order of (x, b, a), so a pair imported twice with its replies swapped costs nothing extra.
    """
    return sha256_hex(canonical_json([prompt, first, second]))


def _prefix(kind: str, judge_id: str, template_version: str) -> str:
    judge_dir = f"{slugify(judge_id)[:60] or 'judge'}-{sha256_hex(judge_id)[:8]}"
    return f"cache/{kind}/{judge_dir}/{slugify(template_version) or 'template'}"


class JudgmentCache(ShardCache):
    """P(first-shown reply) per judgment key, under `cache/judgments/<judge>/<template version>/`; the cache
    builds its own keys from exactly what determines a judgment (storage None: in memory, one run only)."""

    kind = "judgments"

    def __init__(self, storage: Storage | None, judge_id: str, template_version: str):
        super().__init__(storage, _prefix(self.kind, judge_id, template_version))
        self.judge_id = judge_id
        self.template_version = template_version

    def key(self, principle_text: str, prompt: str, first: str, second: str) -> str:
        """Key of a principle's judgment of a pair as shown (`first` in slot A) by this judge and template."""
        return sha256_hex(
            canonical_json(
                {
                    "judge": self.judge_id,
                    "template": self.template_version,
                    "principle": sha256_hex(principle_text),
                    "shown": shown_pair_hash(prompt, first, second),
                }
            )
        )[:32]

    def rationales(self) -> RationaleCache:
        """Where this judge's chain-of-thought rationales go, keyed like its judgments."""
        return RationaleCache(self.storage, self.judge_id, self.template_version)


class RationaleCache(JudgmentCache):
    """Chain-of-thought rationales per judgment key, under `cache/rationales/<judge>/<template version>/`
    (beside, not inside, the judgment shards: each cache lists only its own prefix)."""

    kind = "rationales"
