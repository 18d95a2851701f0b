"""`evals` as a plain function: a trained policy against its base on eval prompts, judged under the
partition's constitution, with the raw and the length-controlled win rate, whether the judge is the policy's
own model or family (and its self-preference where a reference exists), reward scores, refusals, lengths,
judge quality and cost.

Replies go through the generation cache shard by shard and judgments through the judgment cache, so a run
killed anywhere regenerates and re-judges only what was unfinished.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from alignment_dagster.backends import Backend, CallStats, Sampling
from alignment_dagster.core.reporting import StageReport, markdown_table
from alignment_dagster.core.storage import Storage
from alignment_dagster.data.sampling import generation_cache, sample_responses
from alignment_dagster.evaluation.length_control import LC_MIN_PROMPTS, length_controlled_win_rate
from alignment_dagster.evaluation.metrics import (
    CostInputs,
    Prices,
    cost_metrics,
    eval_prompts,
    length_metrics,
    policy_base_pairs,
    policy_vs_base_outcomes,
    refusal_metrics,
    reward_metrics,
    win_rate_metrics,
    win_rate_plot,
    win_rates_by,
)
from alignment_dagster.evaluation.self_judging import (
    ReferenceJudge,
    measured_self_preference,
    own_vs_reference_pairs,
    reference_replies,
)
from alignment_dagster.human.calibration import judge_human_agreement
from alignment_dagster.judge.bias import (
    SelfPreference,
    judge_relation,
    model_name,
    reply_lengths,
    self_preference,
)
from alignment_dagster.judge.cache import JudgmentCache
from alignment_dagster.judge.runner import JudgeResult, judge_pairs
from alignment_dagster.judge.templates import get_template
from alignment_dagster.specs.constitution import Constitution
from alignment_dagster.training.artifacts import MODEL_CARD, is_trained, load_reward_scorer, read_model_card

EVAL_COLUMNS = [
    "prompt_id",
    "category",
    "prompt",
    "policy",
    "base",
    "pair_id",
    "label",
    "outcome",
    "reward_policy",
    "reward_base",
]
SUMMARY_KEYS = [
    "judge.n",
    "policy.same_as_base_rate",
    "judge.win_rate",
    "judge.tie_rate",
    "judge.loss_rate",
    "judge.win_ci_low",
    "judge.win_ci_high",
    "judge.lc_win_rate",
    "judge.lc_ci_low",
    "judge.lc_ci_high",
    "self_preference.same_family",
    "self_preference.excess",
    "reward.mean_diff",
    "reward.policy_higher_rate",
    "length.policy.mean",
    "length.base.mean",
    "refusal.red-team.policy",
    "refusal.red-team.base",
    "refusal.helpful.policy",
    "refusal.helpful.base",
    "quality.audit_agreement",
    "quality.audit_kappa",
    "quality.reward_human_accuracy",
    "quality.reward_hh_accuracy",
    "cost.generation_calls",
    "cost.generated_tokens",
    "cost.judge_model_calls",
    "cost.judge_cache_hits",
    "cost.human_labels_requested",
    "cost.human_labels_received",
    "cost.wall_seconds",
    "cost.estimated",
]
REWARD_CARD_METRICS = {
    "eval_human.accuracy": "quality.reward_human_accuracy",
    "eval_human.n": "quality.reward_human_n",
    "hh_heldout.accuracy": "quality.reward_hh_accuracy",
    "hh_heldout.n": "quality.reward_hh_n",
}


@dataclass(frozen=True)
class EvalSettings:
    max_prompts: int = 12
    max_new_tokens: int = 64
    tie_margin: float = 0.05
    shard_size: int = 64  # judge prompts per cached judgment shard
    generation_shard_size: int = 8  # prompts per cached generation shard
    prices: Prices = Prices()
    lc_min_prompts: int = LC_MIN_PROMPTS  # fewer eval prompts: the length-controlled win rate is n/a
    self_preference_prompts: int = 0  # HH prompts for own-vs-HH pairs; 0: self-preference not measured


@dataclass(frozen=True)
class EvalBackends:
    base: Backend
    policy: Callable[[Path], Backend]  # the base with a trained policy folder on top
    judge: Backend
    on_accelerator: bool  # wall time counts as accelerator time in the cost
    reference: ReferenceJudge | None = None  # a judge of another family, for the self-preference measurement


@dataclass
class PolicyEval:
    table: pd.DataFrame  # EVAL_COLUMNS, one row per eval prompt (empty when the policy was not trained)
    report: StageReport


def judge_quality_metrics(
    ai_preferences: pd.DataFrame,
    edge_cases: pd.DataFrame,
    human_labels: pd.DataFrame,
    reward_dir: Path | None,
) -> dict[str, float]:
    """The judge's agreement with humans on the audit slice, and the reward model's own accuracies on
    human-labelled eval rows and held-out HH pairs (measured when it trained, read from its card)."""
    out: dict[str, float] = {}
    if len(human_labels):
        audit = edge_cases.loc[edge_cases["audit"].astype(bool), "pair_id"] if len(edge_cases) else []
        report = judge_human_agreement(ai_preferences, human_labels, audit)
        nan = float("nan")
        out.update(
            {
                "quality.audit_n": report.n_compared,
                "quality.audit_agreement": nan if report.agreement is None else report.agreement,
                "quality.audit_kappa": nan if report.kappa is None else report.kappa,
            }
        )
    trained = reward_dir is not None and is_trained(reward_dir)
    metrics = read_model_card(reward_dir).get("metrics", {}) if trained else {}
    out.update({dst: metrics[src] for src, dst in REWARD_CARD_METRICS.items() if src in metrics})
    return out


@dataclass
class EvalInputs:
    """What one evals partition reads: its constitution version's judged and labelled pairs, the prompt pool,
    and the trained policy and reward model folders."""

    constitution: Constitution
    prompt_pool: pd.DataFrame
    ai_preferences: pd.DataFrame
    edge_cases: pd.DataFrame
    human_labels: pd.DataFrame
    policy_dir: Path
    reward_dir: Path | None  # None: no reward model scores (sft_evals)
    response_pairs: pd.DataFrame = field(default_factory=pd.DataFrame)  # HH pairs: own-vs-HH references
    known_labels: pd.DataFrame = field(default_factory=pd.DataFrame)

    def human_cost(self, prices: Prices) -> tuple[CostInputs, dict[str, float]]:
        requested = int(self.edge_cases["pair_id"].nunique()) if len(self.edge_cases) else 0
        received = int(self.human_labels["pair_id"].nunique()) if len(self.human_labels) else 0
        inputs = CostInputs(human_labels_requested=requested, human_labels_received=received)
        return inputs, cost_metrics(inputs, prices)


@dataclass
class Generation:
    replies: dict[str, list[str]]  # backend name -> greedy reply per prompt, in prompt order
    counts: dict[str, dict[str, int]]  # backend name -> prompts cached / sampled now, generate calls
    stats: CallStats  # what the backends counted in this run
    seconds: float

    def plus(self, other: Generation) -> Generation:
        """Both runs' replies, counts, counters and seconds (backend names must differ)."""
        return Generation(
            {**self.replies, **other.replies},
            {**self.counts, **other.counts},
            self.stats + other.stats,
            self.seconds + other.seconds,
        )


def _generate(
    prompts: pd.DataFrame, backends: dict[str, Backend], store: Storage, settings: EvalSettings
) -> Generation:
    """Greedy replies of each backend per prompt, through the generation cache."""
    sampling = Sampling(temperature=0.0, max_new_tokens=settings.max_new_tokens)
    generation = Generation({}, {}, CallStats(), 0.0)
    t0 = time.perf_counter()
    for name, backend in backends.items():
        before = backend.stats.snapshot()
        got, counts = sample_responses(
            prompts,
            backend,
            sampling,
            1,
            generation_cache(store, backend.identity),
            shard_size=settings.generation_shard_size,
        )
        made = backend.stats.delta(before)
        generation.counts[name] = {**counts, "generate_calls": made.generate_calls}
        generation.stats = generation.stats + made
        generation.replies[name] = [got[pid][0] for pid in prompts["prompt_id"]]
    generation.seconds = time.perf_counter() - t0
    return generation


def model_tags(policy_dir: Path, reward_dir: Path | None) -> dict[str, str]:
    """What a comparison row was built from: the dataset version and the registered models (or training
    fingerprints), and whether either model was kept by the retrain policy though its data changed."""
    cards = [
        read_model_card(d) if d is not None and (d / MODEL_CARD).is_file() else {}
        for d in (policy_dir, reward_dir)
    ]
    names = [c.get("registered_model") or c.get("fingerprint") or "not trained" for c in cards]
    names[1] = names[1] if reward_dir is not None else "none"
    return {
        "dataset.version": str(cards[0].get("dataset_version", "")),
        "policy.model": names[0],
        "reward.model": names[1],
        "alignment.stale": str(any(c.get("stale") for c in cards)).lower(),
    }


def _untrained(inputs: EvalInputs, quality: dict, settings: EvalSettings) -> PolicyEval:
    reason = read_model_card(inputs.policy_dir).get("skip_reason", "no trained policy")
    tags = {
        "constitution.hash": inputs.constitution.content_hash,
        "alignment.trained": "false",
        **model_tags(inputs.policy_dir, inputs.reward_dir),
    }
    metrics = {**quality, **inputs.human_cost(settings.prices)[1]}
    report = StageReport(tags=tags, summary={"trained": False, "skip_reason": reason}, metrics=metrics)
    return PolicyEval(pd.DataFrame(columns=EVAL_COLUMNS), report.text("skip_reason.txt", reason))


def _prompts(inputs: EvalInputs, settings: EvalSettings, title: str) -> pd.DataFrame:
    """The eval prompts, none of which the policy trained on (its card's train_prompt_ids)."""
    trained_on = read_model_card(inputs.policy_dir).get("train_prompt_ids") or []
    prompts = eval_prompts(inputs.prompt_pool, settings.max_prompts, exclude=trained_on)
    if prompts.empty:
        raise ValueError(
            f"evals[{title}]: prompt_pool has no eval-split prompts the policy was not trained on "
            f"({len(trained_on)} train prompt ids excluded)"
        )
    return prompts


@dataclass
class Judging:
    judged: JudgeResult
    template_version: str
    prompt_tokens: int  # prompt tokens the judge backend counted in this run

    def plus(self, other: Judging) -> Judging:
        """This judging's results with both runs' costs (model calls, cache hits, seconds, tokens)."""
        a, b = self.judged.stats, other.judged.stats
        stats = replace(
            a,
            model_calls=a.model_calls + b.model_calls,
            cache_hits=a.cache_hits + b.cache_hits,
            seconds=a.seconds + b.seconds,
        )
        judged = JudgeResult(self.judged.principles, self.judged.pairs, stats)
        return Judging(judged, self.template_version, self.prompt_tokens + other.prompt_tokens)


def _judge(
    pairs: pd.DataFrame, constitution: Constitution, judge: Backend, store: Storage, settings: EvalSettings
) -> Judging:
    template = get_template(constitution.judge.template)
    before = judge.stats.snapshot()
    cache = JudgmentCache(store, judge.identity, template.version)
    judged = judge_pairs(pairs, constitution, judge, template, cache, shard_size=settings.shard_size)
    return Judging(judged, template.version, judge.stats.delta(before).prompt_tokens)


def _cost(
    inputs: EvalInputs,
    generation: Generation,
    judging: Judging,
    reward_seconds: float,
    on_accelerator: bool,
    prices: Prices,
) -> dict[str, float]:
    stats, judged = generation.stats, judging.judged.stats
    seconds = generation.seconds + judged.seconds + reward_seconds
    human, _ = inputs.human_cost(prices)
    cost = replace(
        human,
        generation_calls=stats.generate_calls,
        generated_tokens=stats.generated_tokens,
        generation_prompt_tokens=stats.prompt_tokens,
        judge_model_calls=judged.model_calls,
        judge_prompt_tokens=judging.prompt_tokens,
        judge_cache_hits=judged.cache_hits,
        stage_seconds={"generation": generation.seconds, "judge": judged.seconds, "reward": reward_seconds},
        accelerator_seconds=seconds if on_accelerator else 0.0,
    )
    return cost_metrics(cost, prices)


def _outcome_metrics(
    table: pd.DataFrame, per_pair: pd.DataFrame, per_principle: pd.DataFrame, generation: Generation
) -> dict[str, float]:
    counts = generation.counts
    return {
        **win_rate_metrics(per_pair, per_principle),
        **length_metrics(table),
        **refusal_metrics(table),
        # A policy whose greedy replies equal the base's can only tie: worth seeing next to the win rate.
        "policy.same_as_base_rate": float((table["policy"] == table["base"]).mean()),
        # Prompts whose reply came from the generation cache / was generated now, and generate calls.
        **{f"generation.{name}.{k}": v for name, c in counts.items() for k, v in c.items()},
    }


def evaluate_policy_vs_base(
    inputs: EvalInputs,
    backends: Callable[[], EvalBackends],
    store: Storage,
    settings: EvalSettings,
    title: str,
) -> PolicyEval:
    """Policy vs base per eval prompt (never one the policy trained on), both orders judged under the
    constitution. An untrained policy (card-only folder) gives an empty table and the human-label cost."""
    quality = judge_quality_metrics(
        inputs.ai_preferences, inputs.edge_cases, inputs.human_labels, inputs.reward_dir
    )
    if not is_trained(inputs.policy_dir):
        return _untrained(inputs, quality, settings)
    prompts = _prompts(inputs, settings, title)
    run = backends()
    references, why_not = _references(inputs, run, settings)
    generation = _replies(prompts, references, run, inputs.policy_dir, store, settings)
    pairs = policy_base_pairs(prompts, generation.replies["policy"], generation.replies["base"])
    judging = _judge(pairs, inputs.constitution, run.judge, store, settings)
    judged = judging.judged
    per_pair, per_principle = policy_vs_base_outcomes(
        judged.pairs, judged.principles, pairs, settings.tie_margin
    )
    own, judging = _self_preference(
        references, why_not, generation, run, inputs.constitution, store, settings, judging
    )
    t1 = time.perf_counter()
    table = pairs.merge(per_pair[["pair_id", "label", "outcome"]], on="pair_id", how="left")
    lc_metrics, lc_tags = _length_control(table, run.base, settings)
    metrics = {
        **_outcome_metrics(table, per_pair, per_principle, generation),
        **lc_metrics,
        **own.metrics(),
        **quality,
        **_reward_scores(table, inputs.reward_dir),
    }
    reward_seconds = time.perf_counter() - t1
    metrics.update(_cost(inputs, generation, judging, reward_seconds, run.on_accelerator, settings.prices))
    report = _trained_report(
        metrics, per_pair, per_principle, table, generation.counts, f"policy vs base [{title}]"
    )
    report.tags.update(
        {
            **model_tags(inputs.policy_dir, inputs.reward_dir),
            "constitution.hash": inputs.constitution.content_hash,
            "alignment.trained": "true",
            "judge.id": run.judge.identity,
            "judge.template": judging.template_version,
            **lc_tags,
            **own.tags(),
        }
    )
    report.add(self_judge=own.relation, self_preference=own.reason)
    report.params["judge_id"] = run.judge.identity
    return PolicyEval(table[EVAL_COLUMNS], report)


def _references(inputs: EvalInputs, run: EvalBackends, settings: EvalSettings) -> tuple[pd.DataFrame, str]:
    """The HH conversations and human-preferred replies the policy's own replies are paired with for the
    self-preference measurement, or none and why not."""
    empty = pd.DataFrame(columns=["prompt_id", "prompt", "category", "reference"])
    if settings.self_preference_prompts <= 0:
        return empty, (
            "no own-vs-reference pairs and no reference judge (evals config self_preference_prompts and "
            "self_preference_reference)"
        )
    if run.reference is None:
        return empty, "no reference judge of another family (evals config self_preference_reference)"
    refs = reference_replies(inputs.response_pairs, inputs.known_labels, settings.self_preference_prompts)
    return refs, "" if len(refs) else "no imported pairs with known labels to pair the policy's replies with"


def _replies(
    prompts: pd.DataFrame,
    references: pd.DataFrame,
    run: EvalBackends,
    policy_dir: Path,
    store: Storage,
    settings: EvalSettings,
) -> Generation:
    """Base and policy replies to the eval prompts, and the policy's own replies to the reference prompts
    (as `policy_self`), with the policy loaded once."""
    policy = run.policy(policy_dir)
    try:
        generation = _generate(prompts, {"base": run.base, "policy": policy}, store, settings)
        if len(references):
            generation = generation.plus(_generate(references, {"policy_self": policy}, store, settings))
    finally:
        policy.close()
    return generation


def _self_preference(
    references: pd.DataFrame,
    why_not: str,
    generation: Generation,
    run: EvalBackends,
    constitution: Constitution,
    store: Storage,
    settings: EvalSettings,
    judging: Judging,
) -> tuple[SelfPreference, Judging]:
    """Whether the judge is the policy's own model or family, and its self-preference where a reference
    exists (own-vs-HH pairs judged by this judge and the reference judge); `judging` gains their cost."""
    relation = judge_relation(run.judge.identity, run.base.identity)
    if not len(references) or run.reference is None:
        return self_preference(relation, why_not=why_not), judging
    pairs = own_vs_reference_pairs(references, generation.replies["policy_self"])
    own = _judge(pairs, constitution, run.judge, store, settings)
    p_a = own.judged.pairs.set_index("pair_id")["p_a"]
    return measured_self_preference(relation, pairs, p_a, run.reference), judging.plus(own)


def _length_control(
    table: pd.DataFrame, base: Backend, settings: EvalSettings
) -> tuple[dict[str, float], dict[str, str]]:
    """The length-controlled win rate beside the raw one, with lengths in the policy's tokens (the base's
    tokenizer: training never changes it) or whitespace tokens without one."""
    lengths, unit = reply_lengths(table, base.count_tokens, f"{model_name(base.identity)} tokens")
    lc = length_controlled_win_rate(
        list(table["outcome"]), list(lengths["len_a"]), list(lengths["len_b"]), min_n=settings.lc_min_prompts
    )
    metrics = {
        **lc.metrics(),
        "length.policy.tokens_mean": float(lengths["len_a"].mean()),
        "length.base.tokens_mean": float(lengths["len_b"].mean()),
    }
    return metrics, {"judge.lc_reason": lc.reason, "length.unit": unit}


def _reward_scores(table: pd.DataFrame, reward_dir: Path | None) -> dict[str, float]:
    """Reward-model scores of both replies (reward_policy / reward_base; NaN without a trained model)."""
    if reward_dir is None or not is_trained(reward_dir):
        table["reward_policy"] = table["reward_base"] = float("nan")
        return {}
    scorer = load_reward_scorer(reward_dir)
    conversations = [[{"role": "user", "content": p}] for p in table["prompt"]]
    table["reward_policy"] = scorer.score(conversations, list(table["policy"]))
    table["reward_base"] = scorer.score(conversations, list(table["base"]))
    return reward_metrics(list(table["reward_policy"]), list(table["reward_base"]))


def _trained_report(
    metrics: dict,
    per_pair: pd.DataFrame,
    per_principle: pd.DataFrame,
    table: pd.DataFrame,
    gen_counts: dict,
    title: str,
) -> StageReport:
    breakdown = pd.concat(
        [
            win_rates_by(per_pair, "category").rename(columns={"category": "group"}),
            win_rates_by(per_principle, "principle_id").rename(columns={"principle_id": "group"}),
        ]
    )
    rows = pd.DataFrame(
        [{"metric": k, "value": round(float(metrics[k]), 4)} for k in SUMMARY_KEYS if k in metrics]
    )
    summary = (
        f"## {title}\n\n{markdown_table(rows, max_rows=len(rows))}\n\n### Win rate by category and principle "
        f"(95% Wilson CI)\n\n{markdown_table(breakdown.round(3), max_rows=len(breakdown))}\n"
    )
    report = StageReport(metrics=metrics)
    report.add(
        trained=True,
        n_prompts=len(table),
        win_rate=float(metrics["judge.win_rate"]),
        win_ci=f"[{metrics['judge.win_ci_low']:.3f}, {metrics['judge.win_ci_high']:.3f}]",
    )
    report.detail(
        "prompts_sampled_vs_cached",
        {name: {k: v for k, v in c.items() if k != "generate_calls"} for name, c in gen_counts.items()},
    )
    report.detail("metrics", {k: v for k, v in metrics.items() if v == v})
    report.table("evals", table[EVAL_COLUMNS]).table("win_rates", breakdown)
    report.plot("win_rates", win_rate_plot(per_pair, per_principle, title), title, key="win_rates_plot")
    return report.text("summary.md", summary, markdown=True)
