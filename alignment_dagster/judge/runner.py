"""Judge a table of pairs under a constitution: both orders, every applicable principle, cached."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import pandas as pd
from tqdm.auto import tqdm

from alignment_dagster.backends.base import Sampling
from alignment_dagster.judge.aggregate import aggregate, combine_judges, vote_from_orders
from alignment_dagster.judge.cache import JudgmentCache, RationaleCache, judgment_key
from alignment_dagster.judge.templates import JudgeTemplate, Message
from alignment_dagster.specs.constitution import Constitution, Principle

PRINCIPLE_COLUMNS = [
    "pair_id",
    "principle_id",
    "weight",
    "p_a_forward",
    "p_a_backward",
    "p_a",
    "order_consistent",
    "judge_id",
    "template_version",
    "rationale_forward",
    "rationale_backward",
]


class ChoiceScorer(Protocol):
    """The slice of the model-backend interface the judge needs."""

    @property
    def identity(self) -> str: ...

    def choice_probabilities(
        self, conversations: Sequence[list[Message]], choices: Sequence[str]
    ) -> list[dict[str, float]]: ...


@dataclass
class JudgeStats:
    pairs: int = 0
    judgments: int = 0  # (pair, principle, order) probabilities needed
    cache_hits: int = 0
    model_calls: int = 0  # judge prompts scored by the model in this run
    rationale_calls: int = 0  # chain-of-thought rationales generated in this run
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class JudgeResult:
    principles: pd.DataFrame
    pairs: pd.DataFrame
    stats: JudgeStats


def applicable(principles: Sequence[Principle], category: str | None) -> list[Principle]:
    return [
        p for p in principles if p.applies_to is None or (category is not None and category in p.applies_to)
    ]


def judge_pairs(
    pairs: pd.DataFrame,
    constitution: Constitution,
    scorer: ChoiceScorer,
    template: JudgeTemplate,
    cache: JudgmentCache | None = None,
    *,
    shard_size: int = 256,
    progress: bool = True,
    rationale_cache: RationaleCache | None = None,
) -> JudgeResult:
    """Score every (pair, applicable principle, order) once, reusing cached probabilities.

    `pairs` needs pair_id, prompt, response_a, response_b and optionally category. Model calls go out in
    shards of `shard_size` prompts, rounded up to the end of a pair (a backend that shares prefixes runs a
    pair's conversation once only when all its prompts are in one call); each shard is cached before the
    next starts (crash-safe resume).
    With a chain-of-thought template the scorer also needs `generate`: rationales are generated (and
    cached, beside the judgments when `cache` is a JudgmentCache) before the letters are scored after them.
    """
    t0 = time.perf_counter()
    judge_id = scorer.identity
    stats = JudgeStats(pairs=len(pairs))
    tasks: list[tuple[str, str, str, str]] = []  # (pair_id, principle_id, forward key, backward key)
    prompts: dict[str, list[Message]] = {}
    owner: dict[str, int] = {}  # prompt key -> the first pair (row number) that needs it
    for n, row in enumerate(pairs.itertuples(index=False)):
        category = getattr(row, "category", None)
        for p in applicable(constitution.principles, category):
            keys = [
                judgment_key(judge_id, template.version, p.text, row.prompt, row.response_a, row.response_b),
                judgment_key(judge_id, template.version, p.text, row.prompt, row.response_b, row.response_a),
            ]
            tasks.append((row.pair_id, p.id, keys[0], keys[1]))
            prompts.setdefault(keys[0], template.render(row.prompt, row.response_a, row.response_b, p.text))
            prompts.setdefault(keys[1], template.render(row.prompt, row.response_b, row.response_a, p.text))
            owner.setdefault(keys[0], n)
            owner.setdefault(keys[1], n)
    stats.judgments = 2 * len(tasks)

    cache = cache if cache is not None else _MemoryCache()
    known = cache.get_many(list(prompts))
    stats.cache_hits = sum((fk in known) + (bk in known) for _, _, fk, bk in tasks)
    missing = [k for k in prompts if k not in known]
    rationales: dict[str, str] = {}
    to_score = prompts
    if template.followup is not None:
        if rationale_cache is None:
            rationale_cache = (
                RationaleCache(cache.storage, cache.judge_id, cache.template_version)
                if isinstance(cache, JudgmentCache)
                else _MemoryCache()
            )
        rationales = _rationales(
            scorer, template, prompts, missing, rationale_cache, stats, shard_size, progress
        )
        to_score = {k: template.with_rationale(prompts[k], rationales[k]) for k in missing}
    letter = template.choices[0]
    bar = tqdm(total=len(missing), desc="judge prompts", unit="prompt", disable=not progress or not missing)
    for chunk in pair_shards(missing, owner, shard_size):
        probs = scorer.choice_probabilities([to_score[k] for k in chunk], list(template.choices))
        values = {k: float(p[letter]) for k, p in zip(chunk, probs, strict=True)}
        cache.put_many(values)
        known.update(values)
        stats.model_calls += len(chunk)
        bar.update(len(chunk))
    bar.close()

    weights = constitution.principle_weights()
    votes = [vote_from_orders(pid, prid, known[fk], known[bk]) for pid, prid, fk, bk in tasks]
    principle_df = pd.DataFrame(
        [
            {
                "pair_id": v.pair_id,
                "principle_id": v.principle_id,
                "weight": weights[v.principle_id],
                "p_a_forward": v.p_a_forward,
                "p_a_backward": v.p_a_backward,
                "p_a": v.p_a,
                "order_consistent": v.order_consistent,
                "judge_id": judge_id,
                "template_version": template.version,
                "rationale_forward": rationales.get(fk),
                "rationale_backward": rationales.get(bk),
            }
            for v, (_, _, fk, bk) in zip(votes, tasks, strict=True)
        ],
        columns=PRINCIPLE_COLUMNS,
    )
    pair_df = aggregate(votes, list(pairs["pair_id"]), weights, constitution.judge)
    stats.seconds = time.perf_counter() - t0
    return JudgeResult(principle_df, pair_df, stats)


def pair_shards(keys: Sequence[str], owner: dict[str, int], size: int) -> list[list[str]]:
    """`keys` (in pair order) in shards of at least `size`, each ending where a pair ends."""
    shards: list[list[str]] = []
    chunk: list[str] = []
    for k in keys:
        if len(chunk) >= size and owner[k] != owner[chunk[-1]]:
            shards.append(chunk)
            chunk = []
        chunk.append(k)
    if chunk:
        shards.append(chunk)
    return shards


def _rationales(
    scorer,
    template: JudgeTemplate,
    prompts: dict[str, list[Message]],
    missing: list[str],
    cache,
    stats: JudgeStats,
    shard_size: int,
    progress: bool,
) -> dict[str, str]:
    """Chain-of-thought rationales for every prompt (cached ones for audit, new ones for `missing`)."""
    if not hasattr(scorer, "generate"):
        raise TypeError(
            f"template {template.id} thinks first (chain of thought): the judge backend must generate"
        )
    rationales = cache.get_many(list(prompts))
    need = [k for k in missing if k not in rationales]
    sampling = Sampling(temperature=0.0, max_new_tokens=template.rationale_tokens)
    bar = tqdm(total=len(need), desc="judge rationales", unit="prompt", disable=not progress or not need)
    for start in range(0, len(need), shard_size):
        chunk = need[start : start + shard_size]
        texts = scorer.generate([prompts[k] for k in chunk], n=1, sampling=sampling)
        values = {k: t[0] for k, t in zip(chunk, texts, strict=True)}
        cache.put_many(values)  # before scoring: a crash keeps the rationales already paid for
        rationales.update(values)
        stats.rationale_calls += len(chunk)
        bar.update(len(chunk))
    bar.close()
    return rationales


def judge_ensemble(
    pairs: pd.DataFrame,
    constitution: Constitution,
    scorer: ChoiceScorer,
    templates: Sequence[JudgeTemplate],
    caches: Sequence[JudgmentCache | None],
    *,
    shard_size: int = 256,
    progress: bool = True,
) -> JudgeResult:
    """Judge with each template (one judge each) and combine per the constitution's `ensemble_agreement`;
    principle rows of all judges are kept (their `template_version` tells them apart)."""
    results = [
        judge_pairs(pairs, constitution, scorer, t, c, shard_size=shard_size, progress=progress)
        for t, c in zip(templates, caches, strict=True)
    ]
    if len(results) == 1:
        return results[0]
    stats = JudgeStats(pairs=len(pairs))
    for r in results:
        for k, v in r.stats.as_dict().items():
            if k != "pairs":
                setattr(stats, k, getattr(stats, k) + v)
    combined = combine_judges([r.pairs for r in results], constitution.judge.ensemble_agreement)
    return JudgeResult(pd.concat([r.principles for r in results], ignore_index=True), combined, stats)


class _MemoryCache:
    """Stand-in when no storage is given: dedupes within one call only."""

    def __init__(self) -> None:
        self.entries: dict[str, Any] = {}

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        return {k: self.entries[k] for k in keys if k in self.entries}

    def put_many(self, values: dict[str, Any]) -> None:
        self.entries.update(values)
