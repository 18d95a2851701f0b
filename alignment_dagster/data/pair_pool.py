"""The pairs the judge sees, and the imported human labels kept apart from it.

Imported labelled pairs (HH-RLHF) are split once, by a hash of the prompt, into a training part and a held-out
part. The training part is never judged: blends may train on its known labels directly (`known_weight`). The
held-out part never trains anything: a slice of it (`judge_heldout` pairs) is judged so that the judge signal
gate, the reward model's held-out accuracy and the bias measures compare the judge with real human labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd

from alignment_dagster.backends import Backend, Sampling
from alignment_dagster.core.keys import sha256_hex
from alignment_dagster.core.reporting import StageReport, value_counts
from alignment_dagster.core.shard_cache import ShardCache
from alignment_dagster.data.pairs import HELDOUT, KNOWN_COLUMNS, PAIR_COLUMNS, import_pairs, known_split
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


@dataclass(frozen=True)
class KnownSplit:
    """How imported labelled pairs are split and how many held-out ones the judge sees."""

    heldout_fraction: float = 0.3
    judge_heldout: int | None = None  # None: every held-out pair is judged


@dataclass
class PairPool:
    pairs: pd.DataFrame  # what the judge sees
    labels: pd.DataFrame  # KNOWN_COLUMNS: every imported pair with a known label, both parts
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
        report = StageReport(summary={"n_labels": len(self.labels)})
        report.detail("by_label", value_counts(self.labels["label"]))
        return report.detail("by_split", value_counts(self.labels["split"]))


def _sampled(
    prompts: pd.DataFrame,
    sampling: PairSampling,
    backend: Callable[[], Backend],
    cache: Callable[[str], ShardCache],
) -> tuple[pd.DataFrame, dict, dict]:
    train = prompts[prompts["split"] == "train"]
    train = train.head(sampling.max_prompts) if sampling.max_prompts else train
    policy = backend()
    replies, counts = sample_responses(
        train, policy, sampling.sampling, sampling.k, cache(policy.identity), shard_size=sampling.shard_size
    )
    sampled, drops = sampled_pairs(train, replies, policy.identity, sampling.pairs_per_prompt)
    return sampled, {f"sampled.{k}": v for k, v in drops.items()}, counts


def split_imported(
    pairs: pd.DataFrame, labels: pd.DataFrame, split: KnownSplit
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(pairs for the judge, KNOWN_COLUMNS table): unlabelled imported pairs and the first `judge_heldout`
    held-out ones (in hash order) go to the judge; the training part never does."""
    known = pairs.merge(labels[["pair_id", "label", "source_dataset"]], on="pair_id", how="inner")
    known["split"] = [known_split(pid, split.heldout_fraction) for pid in known["prompt_id"]]
    heldout = known[known["split"] == HELDOUT].sort_values("pair_id", key=lambda ids: ids.map(sha256_hex))
    judged = (
        heldout["pair_id"] if split.judge_heldout is None else heldout["pair_id"].head(split.judge_heldout)
    )
    to_judge = pairs[~pairs["pair_id"].isin(set(known["pair_id"])) | pairs["pair_id"].isin(set(judged))]
    return to_judge, known[KNOWN_COLUMNS].reset_index(drop=True)


def build_pair_pool(
    prompts: pd.DataFrame,
    *,
    sampling: PairSampling | None,
    backend: Callable[[], Backend],
    cache: Callable[[str], ShardCache],
    import_sources: Sequence[str],
    read_bytes: Callable[[str], bytes],
    import_limit: int | None,
    split: KnownSplit = KnownSplit(),
) -> PairPool:
    """Sampled pairs for the pool's train prompts (`sampling` None: none) and imported pairs from
    `import_sources`, split as `split` says. `backend` is called only when sampling; `cache(identity)` gives
    its generation cache."""
    frames, dropped, counts = [], {}, {}
    if sampling is not None:
        sampled, dropped, counts = _sampled(prompts, sampling, backend, cache)
        frames.append(sampled)
    known, bad = pd.DataFrame(columns=KNOWN_COLUMNS), []
    if import_sources:
        imported = import_pairs(import_sources, read_bytes, limit=import_limit)
        to_judge, known = split_imported(imported.pairs, imported.labels, split)
        frames.append(to_judge)
        bad = imported.bad_rows
        dropped.update({f"imported.{k}": v for k, v in imported.dropped.items()})
    pairs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PAIR_COLUMNS)
    pairs = pairs.drop_duplicates("pair_id").reset_index(drop=True)
    if pairs.empty:
        raise ValueError("no response pairs: enable sampling or give import_sources")
    return PairPool(pairs, known, bad, dropped, counts)
