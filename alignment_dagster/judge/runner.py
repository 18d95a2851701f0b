"""Judge a table of pairs under a constitution: both orders, every applicable principle, cached."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import pandas as pd
from tqdm.auto import tqdm

from alignment_dagster.backends.base import Sampling
from alignment_dagster.judge.aggregate import aggregate, combine_judges, vote_from_orders
from alignment_dagster.judge.cache import JudgmentCache
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


@dataclass
class _Plan:
    """Every judgment a call needs: (pair, principle, forward key, backward key), and each key's prompt."""

    tasks: list[tuple[str, str, str, str]]
    prompts: dict[str, list[Message]]
    owner: dict[str, int]  # prompt key -> the first pair (row number) that needs it


def _plan(
    pairs: pd.DataFrame, constitution: Constitution, template: JudgeTemplate, cache: JudgmentCache
) -> _Plan:
    plan = _Plan([], {}, {})
    for n, row in enumerate(pairs.itertuples(index=False)):
        for p in applicable(constitution.principles, getattr(row, "category", None)):
            orders = [(row.response_a, row.response_b), (row.response_b, row.response_a)]
            keys = [cache.key(p.text, row.prompt, first, second) for first, second in orders]
            plan.tasks.append((row.pair_id, p.id, keys[0], keys[1]))
            for key, (first, second) in zip(keys, orders, strict=True):
                plan.prompts.setdefault(key, template.render(row.prompt, first, second, p.text))
                plan.owner.setdefault(key, n)
    return plan


def judge_pairs(
    pairs: pd.DataFrame,
    constitution: Constitution,
    scorer: ChoiceScorer,
    template: JudgeTemplate,
    cache: JudgmentCache | None = None,
    *,
    shard_size: int = 256,
    progress: bool = True,
) -> JudgeResult:
    """Score every (pair, applicable principle, order) once, reusing cached probabilities.

    `pairs` needs pair_id, prompt, response_a, response_b and optionally category. Model calls go out in
    shards of `shard_size` prompts, rounded up to the end of a pair (a backend that shares prefixes runs a
    pair's conversation once only when all its prompts are in one call); each shard is cached before the
    next starts (crash-safe resume). A scorer with `score_shards` (`compute.cluster_backend`) gets all the
    shards at once and caches each itself, on a cluster's workers. `cache` None: an in-memory cache for this
    call.
    With a chain-of-thought template the scorer also needs `generate`: rationales are generated (and
    cached beside the judgments) before the letters are scored after them.
    """
    t0 = time.perf_counter()
    cache = cache if cache is not None else JudgmentCache(None, scorer.identity, template.version)
    if (cache.judge_id, cache.template_version) != (scorer.identity, template.version):
        raise ValueError(
            f"judgment cache of {cache.judge_id} / {cache.template_version} given for "
            f"{scorer.identity} / {template.version}"
        )
    plan = _plan(pairs, constitution, template, cache)
    stats = JudgeStats(pairs=len(pairs), judgments=2 * len(plan.tasks))
    known = cache.get_many(list(plan.prompts))
    stats.cache_hits = sum((fk in known) + (bk in known) for _, _, fk, bk in plan.tasks)
    missing = [k for k in plan.prompts if k not in known]
    rationales: dict[str, str] = {}
    to_score = plan.prompts
    if template.followup is not None:
        rationales = _rationales(
            scorer, template, plan.prompts, missing, cache.rationales(), stats, shard_size, progress
        )
        to_score = {k: template.with_rationale(plan.prompts[k], rationales[k]) for k in missing}
    shards = pair_shards(missing, plan.owner, shard_size)
    if hasattr(scorer, "score_shards") and shards:  # a cluster judge: one job scores and caches them all
        values, stats.model_calls = scorer.score_shards(
            shards, {k: to_score[k] for k in missing}, list(template.choices), cache
        )
        known.update(values)
        shards = []
    bar = tqdm(total=len(missing), desc="judge prompts", unit="prompt", disable=not progress or not shards)
    for chunk in shards:
        probs = scorer.choice_probabilities([to_score[k] for k in chunk], list(template.choices))
        values = {k: float(p[template.choices[0]]) for k, p in zip(chunk, probs, strict=True)}
        cache.put_many(values)
        known.update(values)
        stats.model_calls += len(chunk)
        bar.update(len(chunk))
    bar.close()
    result = _result(pairs, constitution, plan, known, rationales, scorer.identity, template.version, stats)
    stats.seconds = time.perf_counter() - t0
    return result


def _result(
    pairs: pd.DataFrame,
    constitution: Constitution,
    plan: _Plan,
    known: dict[str, float],
    rationales: dict[str, str],
    judge_id: str,
    template_version: str,
    stats: JudgeStats,
) -> JudgeResult:
    weights = constitution.principle_weights()
    votes = [vote_from_orders(pid, prid, known[fk], known[bk]) for pid, prid, fk, bk in plan.tasks]
    rows = [
        {
            "pair_id": v.pair_id,
            "principle_id": v.principle_id,
            "weight": weights[v.principle_id],
            "p_a_forward": v.p_a_forward,
            "p_a_backward": v.p_a_backward,
            "p_a": v.p_a,
            "order_consistent": v.order_consistent,
            "judge_id": judge_id,
            "template_version": template_version,
            "rationale_forward": rationales.get(fk),
            "rationale_backward": rationales.get(bk),
        }
        for v, (_, _, fk, bk) in zip(votes, plan.tasks, strict=True)
    ]
    principles = pd.DataFrame(rows, columns=PRINCIPLE_COLUMNS)
    return JudgeResult(
        principles, aggregate(votes, list(pairs["pair_id"]), weights, constitution.judge), stats
    )


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
