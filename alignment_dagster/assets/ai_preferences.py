"""`ai_preferences` (+ `ai_principle_votes`): the constitutional judge, per constitution version."""

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetOut,
    Config,
    Output,
    multi_asset,
)
from pydantic import Field

from alignment_dagster.judge.constitutional import judge_constitution
from alignment_dagster.judge.quality import QUALITY_CHECKS, QualityThresholds, judge_quality
from alignment_dagster.partitions import constitution_partitions
from alignment_dagster.resources.compute import ComputeResource
from alignment_dagster.resources.models import ModelBackendResource
from alignment_dagster.resources.storage_io import StorageResource
from alignment_dagster.resources.tracking import MLflowTracking
from alignment_dagster.specs.constitution import ConstitutionVersion


class AIPreferencesConfig(Config):
    shard_size: int = Field(
        64,
        ge=1,
        description="Judge prompts per cached shard (resume granularity), rounded "
        "up to the end of a pair; on a GPU, thousands keep its batches full.",
    )
    min_position_consistency: float = 0.5
    max_first_position_bias: float = 0.15
    max_abstention_rate: float = 0.8
    max_label_imbalance: float = 0.3
    max_cot_parse_failure: float = 0.2

    def thresholds(self) -> QualityThresholds:
        return QualityThresholds(**self.model_dump(exclude={"shard_size"}))


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
    constitution: ConstitutionVersion,
    response_pairs: pd.DataFrame,
    judge_model: ModelBackendResource,
    storage: StorageResource,
    mlflow: MLflowTracking,
    compute: ComputeResource,
):
    """Judge every pair under each applicable principle in both orders; aggregate weighted, debiased votes."""
    spec = constitution.spec
    store = storage.open()
    backends = compute.backends(context, judge_model.backend, judge_model.spec(), store, storage.s3)
    judged = judge_constitution(
        spec, response_pairs, backends, store, mlflow.uri, shard_size=config.shard_size
    )
    for note in judged.notes:
        context.log.info(note)
    checks = judge_quality(judged.result.principles, judged.result.pairs, config.thresholds())
    report = judged.report(spec, checks)
    report.params.update(
        {
            "shard_size": config.shard_size,
            "judge_model": judge_model.spec().model_dump() if spec.judge.use_llm_judge else None,
        }
    )
    report.add(**backends.job_summary())
    stats = judged.result.stats
    context.log.info(f"judge: {stats.model_calls} model calls, {stats.cache_hits} cache hits")
    yield Output(judged.labelled, output_name="ai_preferences", metadata=mlflow.record(context, report))
    yield Output(
        judged.result.principles,
        output_name="ai_principle_votes",
        metadata={"n_votes": len(judged.result.principles)},
    )
    for check in checks:
        yield AssetCheckResult(
            asset_key="ai_preferences",
            check_name=check.name,
            passed=bool(check.passed),
            severity=AssetCheckSeverity.ERROR,
            description=check.description,
            metadata={"value": float(check.value) if check.value == check.value else -1.0},
        )
