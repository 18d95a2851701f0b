"""The pairs the judge sees: the policy's replies paired per train prompt, plus imported labelled pairs whose
known labels are kept apart (they never reach the judge)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd

from alignment_dagster.backends import Backend, Sampling
from alignment_dagster.core.reporting import StageReport, value_counts
from alignment_dagster.core.shard_cache import ShardCache
from alignment_dagster.data.pairs import LABEL_COLUMNS, PAIR_COLUMNS, import_pairs
from alignment_dagster.data.records import BadRow
from alignment_dagster.data.sampling import sample_responses, sampled_pairs


@dataclass(frozen=True)
class PairSampling:
    """How many replies to sample for which prompts (see `ResponsePairsConfig` for each field's meaning)."""

    sampling: Sampling
    k: int = 2
    max_prompts: int = 16  # 0 = every train prompt
    pairs_per_prompt: int = 1
    shard_size: int = 8


@dataclass
class PairPool:
    pairs: pd.DataFrame
    labels: pd.DataFrame  # known labels of imported pairs
    bad_rows: list[BadRow] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    prompt_counts: dict[str, int] = field(default_factory=dict)  # prompts sampled now vs from the cache

    def report(self) -> StageReport:
        pairs = self.pairs
        lengths = pd.concat([pairs["response_a"].str.len(), pairs["response_b"].str.len()])
        chars = {
            "mean": float(lengths.mean()),
            "p50": float(lengths.quantile(0.5)),
            "p90": float(lengths.quantile(0.9)),
        }
        report = StageReport().add(
            n_pairs=len(pairs), n_known_labels=len(self.labels), bad_rows=len(self.bad_rows)
        )
        report.detail("by_origin", value_counts(pairs["origin"]), "origin")
        report.detail("dropped", self.dropped, "dropped")
        report.detail("prompts_sampled_vs_cached", self.prompt_counts, "prompts")
        report.detail("response_chars", chars, "response_chars")
        return report.table(
            "response_pairs",
            pairs,
            ["pair_id", "origin", "category", "prompt", "response_a", "response_b"],
            artifact=False,
            max_chars=60,
        )

    def labels_report(self) -> StageReport:
        return StageReport(
            summary={"n_labels": len(self.labels)},
            details={"by_label": (value_counts(self.labels["label"]), None)},
        )


def build_pair_pool(
    prompts: pd.DataFrame,
    *,
    sampling: PairSampling | None,
    backend: Callable[[], Backend],
    cache: Callable[[str], ShardCache],
    import_sources: Sequence[str],
    read_bytes: Callable[[str], bytes],
    import_limit: int | None,
) -> PairPool:
    """Sampled pairs for the pool's train prompts (`sampling` None: none) and imported pairs from
    `import_sources`. `backend` is called only when sampling; `cache(identity)` gives its generation cache."""
    frames, dropped, counts = [], {}, {}
    if sampling is not None:
        train = prompts[prompts["split"] == "train"]
        train = train.head(sampling.max_prompts) if sampling.max_prompts else train
        policy = backend()
        replies, counts = sample_responses(
            train,
            policy,
            sampling.sampling,
            sampling.k,
            cache(policy.identity),
            shard_size=sampling.shard_size,
        )
        sampled, drops = sampled_pairs(train, replies, policy.identity, sampling.pairs_per_prompt)
        frames.append(sampled)
        dropped.update({f"sampled.{k}": v for k, v in drops.items()})
    labels, bad = pd.DataFrame(columns=LABEL_COLUMNS), []
    if import_sources:
        imported = import_pairs(import_sources, read_bytes, limit=import_limit)
        frames.append(imported.pairs)
        labels, bad = imported.labels, imported.bad_rows
        dropped.update({f"imported.{k}": v for k, v in imported.dropped.items()})
    pairs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PAIR_COLUMNS)
    pairs = pairs.drop_duplicates("pair_id").reset_index(drop=True)
    if pairs.empty:
        raise ValueError("no response pairs: enable sampling or give import_sources")
    return PairPool(pairs, labels, bad, dropped, counts)
