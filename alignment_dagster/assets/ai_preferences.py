"""`ai_preferences` (+ `ai_principle_votes`): the constitutional judge, per constitution version."""

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetOut,
    Config,
    MetadataValue,
    Output,
    multi_asset,
)
from pydantic import Field

from alignment_dagster.core.reporting import markdown_table
from alignment_dagster.judge.constitutional import judge_constitution
from alignment_dagster.judge.quality import QualityThresholds, judge_quality
from alignment_dagster.partitions import constitution_partitions
from alignment_dagster.resources.models import ModelBackendResource
from alignment_dagster.resources.storage_io import StorageResource
from alignment_dagster.resources.tracking import MLflowTracking
from alignment_dagster.specs.constitution import Constitution

QUALITY_CHECKS = [
    "position_consistency",
    "first_position_win_rate",
    "debiased_first_position_rate",
    "abstention_rate",
    "label_balance",
    "cot_parse_failure_rate",
]


class AIPreferencesConfig(Config):
    shard_size: int = Field(
        64,
        ge=1,
        description="Judge prompts per cached shard (resume granularity), rounded up "
        "to the end of a pair; on a GPU, thousands keep its batches full.",
    )
    min_position_consistency: float = 0.5
    max_first_position_bias: float = 0.15
    max_abstention_rate: float = 0.8
    max_label_imbalance: float = 0.3
    max_cot_parse_failure: float = 0.2


@multi_asset(
    outs={
        "ai_preferences": AssetOut(
            group_name="judge",
            kinds={"parquet"},
            description="Per pair: label A/B/abstain, p_chosen, confidence, vote share, reason.",
        ),
        "ai_principle_votes": AssetOut(
            group_name="judge",
            kinds={"parquet"},
            description="Per pair and principle: both orders, debiased p_a, consistency.",
        ),
    },
    partitions_def=constitution_partitions,
    check_specs=[AssetCheckSpec(name, asset="ai_preferences") for name in QUALITY_CHECKS],
    can_subset=False,
)
def ai_preferences(
    context: AssetExecutionContext,
    config: AIPreferencesConfig,
    constitution: dict,
    response_pairs: pd.DataFrame,
    judge_model: ModelBackendResource,
    storage: StorageResource,
    mlflow: MLflowTracking,
):
    """Judge every pair under each applicable principle in both orders; aggregate weighted, debiased votes."""
    c = Constitution.model_validate(constitution["constitution"])
    judged = judge_constitution(
        c,
        response_pairs,
        judge_model.backend,
        storage.open(),
        mlflow.tracking_uri,
        shard_size=config.shard_size,
    )
    for note in judged.notes:
        context.log.info(note)
    result, pm_meta, judge_id, versions = (
        judged.result,
        judged.lineage,
        judged.judge_id,
        judged.template_versions,
    )
    pairs = result.pairs.merge(
        response_pairs[["pair_id", "prompt_id", "category", "origin"]], on="pair_id", how="left"
    )
    labels = {str(k): int(v) for k, v in pairs["label"].value_counts().items()}
    reasons = {str(k): int(v) for k, v in pairs["abstain_reason"].dropna().value_counts().items()}
    checks = judge_quality(
        result.principles,
        result.pairs,
        QualityThresholds(
            config.min_position_consistency,
            config.max_first_position_bias,
            config.max_abstention_rate,
            config.max_label_imbalance,
            config.max_cot_parse_failure,
        ),
    )
    tags = {
        "constitution.hash": c.content_hash,
        "judge.id": judge_id,
        "judge.template": versions,
        **{k: str(v) for k, v in pm_meta.items()},
    }
    with mlflow.asset_run(context, tags=tags) as run:
        run.log_params(
            {
                "judge_model": judge_model.spec().model_dump() if c.judge.use_llm_judge else None,
                "judge_id": judge_id,
                "template_version": versions,
                "judge_settings": c.judge.model_dump(),
                "shard_size": config.shard_size,
            }
        )
        run.log_metrics(
            {
                **{f"stats.{k}": v for k, v in result.stats.as_dict().items()},
                **{f"label.{k}": v for k, v in labels.items()},
                **{f"abstain.{k}": v for k, v in reasons.items()},
                **{f"check.{ch.name}": ch.value for ch in checks},
            }
        )
        run.log_table("ai_preferences", pairs)
        run.log_table("ai_principle_votes", result.principles)
    stats = {**result.stats.as_dict(), "backend_prompts_scored": judged.backend_prompts_scored}
    context.log.info(f"judge: {result.stats.model_calls} model calls, {result.stats.cache_hits} cache hits")
    yield Output(
        pairs,
        output_name="ai_preferences",
        metadata={
            "n_pairs": len(pairs),
            "labels": MetadataValue.json(labels),
            "abstain_reasons": MetadataValue.json(reasons),
            "model_calls": result.stats.model_calls,
            "cache_hits": result.stats.cache_hits,
            "judge_id": judge_id,
            "template_version": versions,
            "stats": MetadataValue.json(stats),
            **({"preference_model": MetadataValue.json(pm_meta)} if pm_meta else {}),
            "preview": MetadataValue.md(
                markdown_table(
                    pairs[["pair_id", "label", "p_chosen", "confidence", "vote_share", "abstain_reason"]]
                )
            ),
            **run.metadata(),
        },
    )
    yield Output(
        result.principles, output_name="ai_principle_votes", metadata={"n_votes": len(result.principles)}
    )
    for ch in checks:
        yield AssetCheckResult(
            asset_key="ai_preferences",
            check_name=ch.name,
            passed=bool(ch.passed),
            severity=AssetCheckSeverity.ERROR,
            description=ch.description,
            metadata={"value": float(ch.value) if ch.value == ch.value else -1.0},
        )
