"""Cached, sharded sampling (resumable): k replies per prompt for response pairs, one greedy reply per prompt
from the base and the trained policy for evals. Keys name the backend identity (a policy's includes its
adapter's content hash), so replies of different models never mix."""

from __future__ import annotations

from collections import Counter

import pandas as pd
from tqdm.auto import tqdm

from alignment_dagster.backends import Backend, Sampling
from alignment_dagster.core.keys import canonical_json, sha256_hex, slugify
from alignment_dagster.core.shard_cache import ShardCache
from alignment_dagster.core.storage import Storage
from alignment_dagster.data.pairs import PAIR_COLUMNS, form_pairs


def generation_cache(storage: Storage, identity: str) -> ShardCache:
    return ShardCache(
        storage, f"cache/generations/{slugify(identity)[:60] or 'model'}-{sha256_hex(identity)[:8]}"
    )


def sample_key(identity: str, sampling: Sampling, k: int, prompt: str) -> str:
    return sha256_hex(
        canonical_json({"model": identity, "sampling": sampling.model_dump(), "k": k, "prompt": prompt})
    )[:32]


def sample_responses(
    prompts: pd.DataFrame,
    backend: Backend,
    sampling: Sampling,
    k: int,
    cache: ShardCache,
    *,
    shard_size: int = 16,
    progress: bool = True,
) -> tuple[dict[str, list[str]], dict[str, int]]:
    """k replies per prompt (prompt_id -> replies) and prompt counts {cached, sampled}; each shard of prompts
    is cached before the next is sampled, so a rerun after a crash generates only the unfinished shards. A
    backend with `generate_shards` (`compute.cluster_backend`) samples all shards in one cluster job."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    keys = {
        row.prompt_id: sample_key(backend.identity, sampling, k, row.prompt) for row in prompts.itertuples()
    }
    known = cache.get_many(list(keys.values()))
    todo = [row for row in prompts.itertuples() if keys[row.prompt_id] not in known]
    chunks = [todo[start : start + shard_size] for start in range(0, len(todo), shard_size)]
    if hasattr(backend, "generate_shards") and chunks:  # a cluster backend: one job samples and caches all
        conversations = {keys[r.prompt_id]: [{"role": "user", "content": r.prompt}] for r in todo}
        shards = [[keys[r.prompt_id] for r in chunk] for chunk in chunks]
        known.update(backend.generate_shards(shards, conversations, k, sampling, cache)[0])
        chunks = []
    bar = tqdm(total=len(todo), desc="sampling", unit="prompt", disable=not progress or not chunks)
    for chunk in chunks:
        replies = backend.generate(
            [[{"role": "user", "content": r.prompt}] for r in chunk], n=k, sampling=sampling
        )
        values = {keys[r.prompt_id]: rs for r, rs in zip(chunk, replies, strict=True)}
        cache.put_many(values)
        known.update(values)
        bar.update(len(chunk))
    bar.close()
    return {pid: known[key] for pid, key in keys.items()}, {
        "cached": len(prompts) - len(todo),
        "sampled": len(todo),
    }


def sampled_pairs(
    prompts: pd.DataFrame, responses: dict[str, list[str]], policy_model: str, pairs_per_prompt: int | None
) -> tuple[pd.DataFrame, Counter]:
    dropped: Counter = Counter()
    rows = []
    for row in prompts.itertuples():
        if len(responses[row.prompt_id]) < 2:
            raise ValueError(f"pairs need k >= 2 replies per prompt, got {len(responses[row.prompt_id])}")
        rows += form_pairs(
            row.prompt_id,
            row.prompt,
            responses[row.prompt_id],
            category=row.category,
            policy_model=policy_model,
            max_pairs=pairs_per_prompt,
            dropped=dropped,
        )
    return pd.DataFrame(rows, columns=PAIR_COLUMNS), dropped
