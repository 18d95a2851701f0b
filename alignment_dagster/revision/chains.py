"""Critique -> revision chains, round by round over every prompt at once (batched model calls).

Per prompt: the policy's first reply (round 0), then up to `revision.rounds` rounds of (principle drawn by
weight, seeded by the prompt; critique; revision; boilerplate stripped; judged against the reply it replaces;
the gate's decision). A round revises the chain's last *accepted* reply, so a refused revision is kept in the
chain for audit but never built on; the chain stops after a round that gains too little. Every model call
goes through the call cache, so a rerun or a resumed run makes only the calls whose input changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from alignment_dagster.backends import Backend, Sampling
from alignment_dagster.data.pairs import pair_id_for
from alignment_dagster.judge.runner import applicable
from alignment_dagster.revision.acceptance import RoundDecision, best_round, decide_round
from alignment_dagster.revision.call_cache import CallCache, CallCount, generate_cached
from alignment_dagster.revision.critique import (
    critique_messages,
    draw_principle,
    revision_messages,
    same_reply,
    strip_boilerplate,
)
from alignment_dagster.revision.judging import RevisionJudge
from alignment_dagster.specs.constitution import Constitution, Principle

ROUND_COLUMNS = [
    "prompt_id",
    "prompt",
    "category",
    "round",
    "principle_id",
    "before",
    "critique",
    "revision_raw",
    "revision",
    "boilerplate_stripped",
    "p_principle",
    "p_helpful",
    "gain",
    "length_ratio",
    "new_refusal",
    "accepted",
    "reason",
    "stop",
    "critique_key",
    "revision_key",
]


@dataclass(frozen=True)
class ChainSettings:
    """Sampling of the policy's replies, critiques and revisions (greedy by default: a chain is then a
    function of its inputs, and the cache serves it again exactly)."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    seed: int = 0
    shard_size: int = 8  # conversations per cached generation shard (resume granularity)

    def sampling(self) -> Sampling:
        return Sampling(temperature=self.temperature, max_new_tokens=self.max_new_tokens, seed=self.seed)


@dataclass
class Chain:
    prompt_id: str
    prompt: str
    category: str | None
    original: str
    current: str  # the last accepted reply (the original until a revision is accepted)
    stopped: bool = False
    decisions: list[tuple[int, RoundDecision]] = field(default_factory=list)


@dataclass
class ChainRun:
    rounds: pd.DataFrame  # ROUND_COLUMNS, round 0 = the first reply
    calls: CallCount
    policy_identity: str


def _helpful(constitution: Constitution, drawn: Principle, category: str | None) -> list[str]:
    """The `helpful` principles (other than the drawn one) a revision must not make worse."""
    return [
        p.id
        for p in applicable(constitution.principles, category)
        if p.role == "helpful" and p.id != drawn.id
    ]


def _first_replies(prompts: pd.DataFrame, policy: Backend, cache: CallCache, s: ChainSettings, count):
    conversations = [[{"role": "user", "content": p}] for p in prompts["prompt"]]
    replies, keys = generate_cached(
        policy, conversations, s.sampling(), cache, count, shard_size=s.shard_size
    )
    chains, rows = [], []
    for row, reply, key in zip(prompts.itertuples(index=False), replies, keys, strict=True):
        category = getattr(row, "category", None)
        chains.append(Chain(row.prompt_id, row.prompt, category, reply.strip(), reply.strip()))
        rows.append(
            {
                **dict.fromkeys(ROUND_COLUMNS),
                "prompt_id": row.prompt_id,
                "prompt": row.prompt,
                "category": category,
                "round": 0,
                "revision_raw": reply,
                "revision": reply.strip(),
                "accepted": False,
                "reason": "first reply",
                "stop": False,
                "revision_key": key,
            }
        )
    return chains, rows


def _judge_round(constitution, judge: RevisionJudge, work: list) -> dict[str, tuple[float, float | None]]:
    """(p under the drawn principle, mean p under the helpful ones or None) per pair id, revision in A."""
    pairs, ids = [], {}
    for chain, principle, revision, pair_id in work:
        if not revision.strip() or same_reply(chain.current, revision) or pair_id in ids:
            continue
        ids[pair_id] = [principle.id, *_helpful(constitution, principle, chain.category)]
        pairs.append(
            {
                "pair_id": pair_id,
                "prompt_id": chain.prompt_id,
                "prompt": chain.prompt,
                "response_a": revision,
                "response_b": chain.current,
                "category": chain.category,
            }
        )
    if not pairs:
        return {}
    table = judge.principle_probabilities(pd.DataFrame(pairs), ids)
    p = {(r.pair_id, r.principle_id): float(r.p_a) for r in table.itertuples(index=False)}
    out = {}
    for pair_id, principle_ids in ids.items():
        helpful = [p[(pair_id, h)] for h in principle_ids[1:]]
        out[pair_id] = (p[(pair_id, principle_ids[0])], sum(helpful) / len(helpful) if helpful else None)
    return out


def _round(constitution, round_, chains, policy, judge, cache, s: ChainSettings, count) -> list[dict]:
    """One round over every chain still going: critiques, revisions, judgments, decisions."""
    work = []
    for chain in chains:
        if not chain.stopped:
            principle = draw_principle(constitution, chain.prompt_id, chain.category, round_)
            if principle is None:
                chain.stopped = True
            else:
                work.append([chain, principle])
    if not work:
        return []
    sampling = s.sampling()
    demos = {id(p): constitution.demonstrations_for(p) for _, p in work}
    convs = [critique_messages(p, demos[id(p)], c.prompt, c.current) for c, p in work]
    critiques, ckeys = generate_cached(policy, convs, sampling, cache, count, shard_size=s.shard_size)
    convs = [
        revision_messages(p, demos[id(p)], c.prompt, c.current, crit)
        for (c, p), crit in zip(work, critiques, strict=True)
    ]
    raws, rkeys = generate_cached(policy, convs, sampling, cache, count, shard_size=s.shard_size)
    revised = [strip_boilerplate(raw) for raw in raws]
    items = [
        (c, p, text, pair_id_for(c.prompt, text, c.current))
        for (c, p), (text, _) in zip(work, revised, strict=True)
    ]
    probs = _judge_round(constitution, judge, items)
    rows = []
    for (chain, principle, text, pair_id), critique, raw, stripped, ck, rk in zip(
        items, critiques, raws, [st for _, st in revised], ckeys, rkeys, strict=True
    ):
        p_principle, p_helpful = probs.get(pair_id, (0.5, None))
        decision = decide_round(
            chain.current, text, p_principle, p_helpful, principle.allows_refusal, constitution.revision
        )
        rows.append(_round_row(chain, round_, principle, critique, raw, text, stripped, decision, ck, rk))
        rows[-1].update(p_principle=p_principle, p_helpful=p_helpful)
        chain.decisions.append((round_, decision))
        if decision.accepted:
            chain.current = text
        chain.stopped = decision.stop
    return rows


def _round_row(chain, round_, principle, critique, raw, text, stripped, decision, ck, rk) -> dict:
    return {
        "prompt_id": chain.prompt_id,
        "prompt": chain.prompt,
        "category": chain.category,
        "round": round_,
        "principle_id": principle.id,
        "before": chain.current,
        "critique": critique.strip(),
        "revision_raw": raw,
        "revision": text,
        "boilerplate_stripped": stripped,
        "gain": decision.gain,
        "length_ratio": decision.length_ratio,
        "new_refusal": decision.new_refusal,
        "accepted": decision.accepted,
        "reason": decision.reason,
        "stop": decision.stop,
        "critique_key": ck,
        "revision_key": rk,
    }


def run_chains(
    prompts: pd.DataFrame,
    constitution: Constitution,
    policy: Backend,
    judge: RevisionJudge,
    cache: CallCache,
    settings: ChainSettings,
) -> ChainRun:
    """Every prompt's chain (prompts: prompt_id, prompt, category); one row per round, round 0 the first
    reply. `best` marks each chain's best accepted round."""
    count = CallCount()
    chains, rows = _first_replies(prompts, policy, cache, settings, count)
    for round_ in range(1, constitution.revision.rounds + 1):
        rows += _round(constitution, round_, chains, policy, judge, cache, settings, count)
    table = pd.DataFrame(rows, columns=ROUND_COLUMNS).sort_values(["prompt_id", "round"], kind="stable")
    best = {(c.prompt_id, best_round(c.decisions)) for c in chains}
    table["best"] = [(pid, r) in best for pid, r in zip(table["prompt_id"], table["round"], strict=True)]
    return ChainRun(table.reset_index(drop=True), count, policy.identity)
