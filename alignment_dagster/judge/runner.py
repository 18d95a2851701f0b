"""Judge a table of pairs under a constitution: both orders, every applicable principle, cached."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import pandas as pd
from tqdm.auto import tqdm

from alignment_dagster.constitution import Constitution, Principle
from alignment_dagster.judge.aggregate import aggregate, vote_from_orders
from alignment_dagster.judge.cache import JudgmentCache, judgment_key
from alignment_dagster.judge.templates import JudgeTemplate, Message

PRINCIPLE_COLUMNS = [
    "pair_id", "principle_id", "weight", "p_a_forward", "p_a_backward", "p_a", "order_consistent",
    "judge_id", "template_version",
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
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class JudgeResult:
    principles: pd.DataFrame
    pairs: pd.DataFrame
    stats: JudgeStats


def applicable(principles: Sequence[Principle], category: str | None) -> list[Principle]:
    return [p for p in principles if p.applies_to is None or (category is not None and category in p.applies_to)]


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
    shards of `shard_size` prompts; each shard is cached before the next starts (crash-safe resume).
    """
    t0 = time.perf_counter()
    judge_id = scorer.identity
    stats = JudgeStats(pairs=len(pairs))
    tasks: list[tuple[str, str, str, str]] = []  # (pair_id, principle_id, forward key, backward key)
    prompts: dict[str, list[Message]] = {}
    for row in pairs.itertuples(index=False):
        category = getattr(row, "category", None)
        for p in applicable(constitution.principles, category):
            keys = [
                judgment_key(judge_id, template.version, p.text, row.prompt, row.response_a, row.response_b),
                judgment_key(judge_id, template.version, p.text, row.prompt, row.response_b, row.response_a),
            ]
            tasks.append((row.pair_id, p.id, keys[0], keys[1]))
            prompts.setdefault(keys[0], template.render(row.prompt, row.response_a, row.response_b, p.text))
            prompts.setdefault(keys[1], template.render(row.prompt, row.response_b, row.response_a, p.text))
    stats.judgments = 2 * len(tasks)

    cache = cache if cache is not None else _MemoryCache()
    known = cache.get_many(list(prompts))
    stats.cache_hits = sum((fk in known) + (bk in known) for _, _, fk, bk in tasks)
    missing = [k for k in prompts if k not in known]
    letter = template.choices[0]
    bar = tqdm(total=len(missing), desc="judge prompts", unit="prompt", disable=not progress or not missing)
    for start in range(0, len(missing), shard_size):
        chunk = missing[start : start + shard_size]
        probs = scorer.choice_probabilities([prompts[k] for k in chunk], list(template.choices))
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
                "pair_id": v.pair_id, "principle_id": v.principle_id, "weight": weights[v.principle_id],
                "p_a_forward": v.p_a_forward, "p_a_backward": v.p_a_backward, "p_a": v.p_a,
                "order_consistent": v.order_consistent, "judge_id": judge_id, "template_version": template.version,
            }
            for v in votes
        ],
        columns=PRINCIPLE_COLUMNS,
    )
    pair_df = aggregate(votes, list(pairs["pair_id"]), weights, constitution.judge)
    stats.seconds = time.perf_counter() - t0
    return JudgeResult(principle_df, pair_df, stats)


class _MemoryCache:
    """Stand-in when no storage is given: dedupes within one call only."""

    def __init__(self) -> None:
        self.entries: dict[str, float] = {}

    def get_many(self, keys: list[str]) -> dict[str, float]:
        return {k: self.entries[k] for k in keys if k in self.entries}

    def put_many(self, values: dict[str, float]) -> None:
        self.entries.update(values)
