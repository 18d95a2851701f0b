"""`evals` (constitution x blend): the trained policy against its base model, and `comparison` across partitions.

The logic lives in alignment_dagster/evaluation.py and alignment_dagster/comparison.py; this module wires
the stored assets, the model resources and MLflow together.
"""

import time

import pandas as pd
from dagster import (
    AssetExecutionContext,
    AssetIn,
    Config,
    MetadataValue,
    asset,
)
from pydantic import Field

from alignment_dagster.assets.preference_dataset import BY_CONSTITUTION
from alignment_dagster.backends import Sampling, make_backend
from alignment_dagster.core.reporting import markdown_table, png_markdown
from alignment_dagster.data.sampling import generation_cache, sample_responses
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
from alignment_dagster.human.calibration import judge_human_agreement
from alignment_dagster.judge.cache import JudgmentCache
from alignment_dagster.judge.runner import judge_pairs
from alignment_dagster.judge.templates import get_template
from alignment_dagster.partitions import constitution_blend_partitions
from alignment_dagster.resources.models import ModelBackendResource
from alignment_dagster.resources.storage_io import ModelDir, StorageResource
from alignment_dagster.resources.tracking import MLflowTracking
from alignment_dagster.specs.constitution import Constitution
from alignment_dagster.training.artifacts import is_trained, load_reward_scorer, read_model_card

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


class EvalsConfig(Config):
    max_prompts: int = Field(12, ge=1, description="Eval-split prompts (round-robin over categories).")
    max_new_tokens: int = Field(64, ge=1, description="Tokens per reply, policy and base alike (greedy).")
    tie_margin: float = Field(0.05, ge=0, lt=0.5, description="Per principle: |p - 0.5| below this is a tie.")
    shard_size: int = Field(64, ge=1, description="Judge prompts per cached judgment shard.")
    generation_shard_size: int = Field(
        8,
        ge=1,
        description="Prompts per cached generation shard, base and policy alike (resume granularity).",
    )
    price_per_1k_prompt_tokens: float = Field(0.0, ge=0, description="For the cost estimate.")
    price_per_1k_generated_tokens: float = Field(0.0, ge=0)
    price_per_accelerator_hour: float = Field(0.0, ge=0)
    price_per_human_label: float = Field(0.0, ge=0)

    def prices(self) -> Prices:
        return Prices(
            self.price_per_1k_prompt_tokens,
            self.price_per_1k_generated_tokens,
            self.price_per_accelerator_hour,
            self.price_per_human_label,
        )


def _human_counts(edge_cases: pd.DataFrame, human_labels: pd.DataFrame) -> tuple[int, int]:
    requested = int(edge_cases["pair_id"].nunique()) if len(edge_cases) else 0
    received = int(human_labels["pair_id"].nunique()) if len(human_labels) else 0
    return requested, received


def _quality(ai_preferences, edge_cases, human_labels, reward_card: dict | None) -> dict[str, float]:
    audit = edge_cases.loc[edge_cases["audit"].astype(bool), "pair_id"] if len(edge_cases) else []
    out: dict[str, float] = {}
    if len(human_labels):
        report = judge_human_agreement(ai_preferences, human_labels, audit)
        out.update(
            {
                "quality.audit_n": report.n_compared,
                "quality.audit_agreement": report.agreement if report.agreement is not None else float("nan"),
                "quality.audit_kappa": report.kappa if report.kappa is not None else float("nan"),
            }
        )
    # The reward model measured itself on human-labelled eval rows and held-out HH pairs when it trained.
    metrics = (reward_card or {}).get("metrics", {})
    for src, dst in (
        ("eval_human.accuracy", "quality.reward_human_accuracy"),
        ("eval_human.n", "quality.reward_human_n"),
        ("hh_heldout.accuracy", "quality.reward_hh_accuracy"),
        ("hh_heldout.n", "quality.reward_hh_n"),
    ):
        if src in metrics:
            out[dst] = metrics[src]
    return out


@asset(
    partitions_def=constitution_blend_partitions,
    ins={
        "constitution": AssetIn(partition_mapping=BY_CONSTITUTION),
        "ai_preferences": AssetIn(partition_mapping=BY_CONSTITUTION),
        "edge_cases": AssetIn(partition_mapping=BY_CONSTITUTION),
        "human_labels": AssetIn(partition_mapping=BY_CONSTITUTION),
        "prompt_pool": AssetIn(),
        "dpo_policy": AssetIn(),
        "reward_model": AssetIn(),
    },
    group_name="evals",
    kinds={"mlflow", "parquet"},
)
def evals(
    context: AssetExecutionContext,
    config: EvalsConfig,
    constitution: dict,
    ai_preferences: pd.DataFrame,
    edge_cases: pd.DataFrame,
    human_labels: pd.DataFrame,
    prompt_pool: pd.DataFrame,
    dpo_policy: ModelDir,
    reward_model: ModelDir,
    policy_model: ModelBackendResource,
    judge_model: ModelBackendResource,
    storage: StorageResource,
    mlflow: MLflowTracking,
) -> pd.DataFrame:
    """Policy vs base on eval prompts, judged under the partition's constitution (both orders): win rates with
    95% CIs per principle and category, reward scores, lengths, refusals, cost and judge quality."""
    c = Constitution.model_validate(constitution["constitution"])
    requested, received = _human_counts(edge_cases, human_labels)
    reward_card = read_model_card(reward_model.path) if is_trained(reward_model.path) else None
    quality = _quality(ai_preferences, edge_cases, human_labels, reward_card)
    tags = {"constitution.hash": c.content_hash}
    if not is_trained(dpo_policy.path):
        reason = read_model_card(dpo_policy.path).get("skip_reason", "no trained policy")
        context.log.warning(
            f"evals[{context.partition_key}]: policy not trained ({reason}); nothing to compare"
        )
        with mlflow.asset_run(context, tags={**tags, "alignment.trained": "false"}) as run:
            run.log_metrics(
                {
                    **quality,
                    **cost_metrics(
                        CostInputs(human_labels_requested=requested, human_labels_received=received),
                        config.prices(),
                    ),
                }
            )
            run.log_text("skip_reason.txt", reason)
        context.add_output_metadata({"trained": False, "skip_reason": reason, **run.metadata()})
        return pd.DataFrame(columns=EVAL_COLUMNS)

    trained_on = read_model_card(dpo_policy.path).get("train_prompt_ids") or []
    prompts = eval_prompts(prompt_pool, config.max_prompts, exclude=trained_on)
    if prompts.empty:
        raise ValueError(
            f"evals[{context.partition_key}]: prompt_pool has no eval-split prompts the policy was not "
            f"trained on ({len(trained_on)} train prompt ids excluded)"
        )
    conversations = [[{"role": "user", "content": p}] for p in prompts["prompt"]]
    sampling = Sampling(temperature=0.0, max_new_tokens=config.max_new_tokens)
    store = storage.open()
    base_backend = policy_model.backend()
    before = dict(base_backend.stats.__dict__)
    t0 = time.perf_counter()
    # Through the generation cache, shard by shard, like response_pairs: a rerun after a crash (in generation,
    # judging or later) regenerates nothing already finished. Base and policy identities differ (the policy's
    # names its adapter's content hash), so their replies are cached apart.
    replies, gen_counts, gen_calls = {}, {}, {}
    policy_backend = make_backend(policy_model.spec().model_copy(update={"adapter": str(dpo_policy.path)}))
    try:
        for name, backend in (("base", base_backend), ("policy", policy_backend)):
            calls_before = backend.stats.generate_calls
            replies[name], gen_counts[name] = sample_responses(
                prompts,
                backend,
                sampling,
                1,
                generation_cache(store, backend.identity),
                shard_size=config.generation_shard_size,
            )
            gen_calls[name] = backend.stats.generate_calls - calls_before
    finally:
        policy_backend.close()
    gen_seconds = time.perf_counter() - t0
    gen = {
        k: base_backend.stats.__dict__[k] - before[k] + policy_backend.stats.__dict__[k]
        for k in ("generate_calls", "generated_tokens", "prompt_tokens")
    }
    base = [replies["base"][pid][0] for pid in prompts["prompt_id"]]
    policy = [replies["policy"][pid][0] for pid in prompts["prompt_id"]]

    pairs = policy_base_pairs(prompts, policy, base)
    judge = judge_model.backend()
    template = get_template(c.judge.template)
    judge_tokens_before = judge.stats.prompt_tokens
    judged = judge_pairs(
        pairs,
        c,
        judge,
        template,
        JudgmentCache(store, judge.identity, template.version),
        shard_size=config.shard_size,
    )
    per_pair, per_principle = policy_vs_base_outcomes(
        judged.pairs, judged.principles, pairs, config.tie_margin
    )

    t1 = time.perf_counter()
    table = pairs.merge(per_pair[["pair_id", "label", "outcome"]], on="pair_id", how="left")
    metrics = {
        **win_rate_metrics(per_pair, per_principle),
        **length_metrics(table),
        **refusal_metrics(table),
        **quality,
        # A policy whose greedy replies equal the base's can only tie: worth seeing next to the win rate.
        "policy.same_as_base_rate": float((table["policy"] == table["base"]).mean()),
        # Prompts whose reply came from the generation cache / was generated now, and generate calls.
        **{f"generation.{name}.{k}": v for name, counts in gen_counts.items() for k, v in counts.items()},
        **{f"generation.{name}.generate_calls": v for name, v in gen_calls.items()},
    }
    if reward_card is not None:
        scorer = load_reward_scorer(reward_model.path)
        table["reward_policy"] = scorer.score(conversations, list(table["policy"]))
        table["reward_base"] = scorer.score(conversations, list(table["base"]))
        metrics.update(reward_metrics(list(table["reward_policy"]), list(table["reward_base"])))
    else:
        table["reward_policy"] = table["reward_base"] = float("nan")
    reward_seconds = time.perf_counter() - t1
    on_gpu = (policy_model.spec().device or "").startswith("cuda") or _cuda()
    cost = CostInputs(
        generation_calls=gen["generate_calls"],
        generated_tokens=gen["generated_tokens"],
        generation_prompt_tokens=gen["prompt_tokens"],
        judge_model_calls=judged.stats.model_calls,
        judge_prompt_tokens=judge.stats.prompt_tokens - judge_tokens_before,
        judge_cache_hits=judged.stats.cache_hits,
        generation_seconds=gen_seconds,
        judge_seconds=judged.stats.seconds,
        reward_seconds=reward_seconds,
        accelerator_seconds=(gen_seconds + judged.stats.seconds + reward_seconds) if on_gpu else 0.0,
        human_labels_requested=requested,
        human_labels_received=received,
    )
    metrics.update(cost_metrics(cost, config.prices()))

    title = f"policy vs base [{context.partition_key}]"
    png = win_rate_plot(per_pair, per_principle, title)
    breakdown = pd.concat(
        [
            win_rates_by(per_pair, "category").rename(columns={"category": "group"}),
            win_rates_by(per_principle, "principle_id").rename(columns={"principle_id": "group"}),
        ]
    )
    summary = _summary(title, metrics, breakdown)
    with mlflow.asset_run(
        context,
        tags={
            **tags,
            "alignment.trained": "true",
            "judge.id": judge.identity,
            "judge.template": template.version,
        },
    ) as run:
        run.log_params(
            {**config.model_dump(), "policy_dir": str(dpo_policy.path), "judge_id": judge.identity}
        )
        run.log_metrics(metrics)
        run.log_table("evals", table[EVAL_COLUMNS])
        run.log_table("win_rates", breakdown)
        run.log_figure("win_rates", png)
        run.log_text("summary.md", summary)
    context.log.info(
        f"evals[{context.partition_key}]: win {metrics['judge.win_rate']:.2f} "
        f"[{metrics['judge.win_ci_low']:.2f}, {metrics['judge.win_ci_high']:.2f}] "
        f"over {len(table)} prompts"
    )
    context.add_output_metadata(
        {
            "trained": True,
            "n_prompts": len(table),
            "win_rate": MetadataValue.float(float(metrics["judge.win_rate"])),
            "win_ci": f"[{metrics['judge.win_ci_low']:.3f}, {metrics['judge.win_ci_high']:.3f}]",
            "prompts_sampled_vs_cached": MetadataValue.json(gen_counts),
            "summary": MetadataValue.md(summary),
            "win_rates_plot": MetadataValue.md(png_markdown(png, title)),
            "metrics": MetadataValue.json({k: v for k, v in metrics.items() if v == v}),
            **run.metadata(),
        }
    )
    return table[EVAL_COLUMNS]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _summary(title: str, metrics: dict, breakdown: pd.DataFrame) -> str:
    keys = [
        "judge.n",
        "policy.same_as_base_rate",
        "judge.win_rate",
        "judge.tie_rate",
        "judge.loss_rate",
        "judge.win_ci_low",
        "judge.win_ci_high",
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
    rows = pd.DataFrame([{"metric": k, "value": round(float(metrics[k]), 4)} for k in keys if k in metrics])
    return (
        f"## {title}\n\n{markdown_table(rows, max_rows=len(rows))}\n\n### Win rate by category and principle "
        f"(95% Wilson CI)\n\n{markdown_table(breakdown.round(3), max_rows=len(breakdown))}\n"
    )
