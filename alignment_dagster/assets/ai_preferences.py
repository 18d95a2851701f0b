"""`ai_preferences` (+ `ai_principle_votes`): the constitutional judge, per constitution version."""

import tempfile
from pathlib import Path

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

from alignment_dagster.constitution import Constitution
from alignment_dagster.judge.cache import JudgmentCache
from alignment_dagster.judge.health import QualityThresholds, judge_quality
from alignment_dagster.judge.aggregate import PAIR_COLUMNS, combine_judges
from alignment_dagster.judge.preference_model import judge_with_reward_model
from alignment_dagster.judge.runner import PRINCIPLE_COLUMNS, JudgeResult, JudgeStats, judge_ensemble
from alignment_dagster.judge.templates import get_template
from alignment_dagster.partitions import constitution_partitions
from alignment_dagster.reporting import markdown_table
from alignment_dagster.resources.models import ModelBackendResource
from alignment_dagster.resources.storage import StorageResource
from alignment_dagster.resources.tracking import MLflowTracking

QUALITY_CHECKS = ["position_consistency", "first_position_win_rate", "debiased_first_position_rate",
                  "abstention_rate", "label_balance", "cot_parse_failure_rate"]


class AIPreferencesConfig(Config):
    shard_size: int = Field(64, ge=1, description="Judge prompts per cached shard (resume granularity).")
    min_position_consistency: float = 0.5
    max_first_position_bias: float = 0.15
    max_abstention_rate: float = 0.8
    max_label_imbalance: float = 0.3
    max_cot_parse_failure: float = 0.2


@multi_asset(
    outs={
        "ai_preferences": AssetOut(group_name="judge", kinds={"parquet"},
                                   description="Per pair: label A/B/abstain, p_chosen, confidence, vote share, reason."),
        "ai_principle_votes": AssetOut(group_name="judge", kinds={"parquet"},
                                       description="Per pair and principle: both orders, debiased p_a, consistency."),
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
    templates = [get_template(t) for t in [c.judge.template, *c.judge.ensemble_templates]] if c.judge.use_llm_judge else []
    backend = judge_model.backend() if templates else None
    calls_before = backend.stats.scored_prompts if backend else 0
    store = storage.open()
    if backend is not None:
        caches = [JudgmentCache(store, backend.identity, t.version) for t in templates]
        result = judge_ensemble(response_pairs, c, backend, templates, caches, shard_size=config.shard_size)
    pm_meta: dict = {}
    if c.judge.preference_model:
        with tempfile.TemporaryDirectory(prefix="alignment-pm-") as workdir:
            pm, pm_meta = judge_with_reward_model(c, response_pairs, store, mlflow.tracking_uri, Path(workdir))
        context.log.info(f"preference-model judge {pm_meta['judge.preference_model']}: {pm.model_calls} replies "
                         f"scored, {pm.cache_hits} cached, {pm.n_trained_on} pairs left out (trained on)")
        pm_pairs = pm.pairs[PAIR_COLUMNS]
        if backend is None:
            result = JudgeResult(pd.DataFrame(columns=PRINCIPLE_COLUMNS), pm_pairs, JudgeStats(pairs=len(pm_pairs)))
        else:
            result = JudgeResult(result.principles, combine_judges([result.pairs, pm_pairs], c.judge.ensemble_agreement),
                                 result.stats)
    pairs = result.pairs.merge(response_pairs[["pair_id", "prompt_id", "category", "origin"]], on="pair_id", how="left")
    labels = {str(k): int(v) for k, v in pairs["label"].value_counts().items()}
    reasons = {str(k): int(v) for k, v in pairs["abstain_reason"].dropna().value_counts().items()}
    checks = judge_quality(result.principles, result.pairs, QualityThresholds(
        config.min_position_consistency, config.max_first_position_bias, config.max_abstention_rate,
        config.max_label_imbalance, config.max_cot_parse_failure))
    versions = ",".join(t.version for t in templates)
    judge_id = ",".join([*([backend.identity] if backend else []), *([pm_meta["judge.preference_model_id"]] if pm_meta else [])])
    tags = {"constitution.hash": c.content_hash, "judge.id": judge_id, "judge.template": versions,
            **{k: str(v) for k, v in pm_meta.items()}}
    with mlflow.asset_run(context, tags=tags) as run:
        run.log_params({"judge_model": judge_model.spec().model_dump() if backend else None, "judge_id": judge_id,
                        "template_version": versions, "judge_settings": c.judge.model_dump(),
                        "shard_size": config.shard_size})
        run.log_metrics({**{f"stats.{k}": v for k, v in result.stats.as_dict().items()},
                         **{f"label.{k}": v for k, v in labels.items()}, **{f"abstain.{k}": v for k, v in reasons.items()},
                         **{f"check.{ch.name}": ch.value for ch in checks}})
        run.log_table("ai_preferences", pairs)
        run.log_table("ai_principle_votes", result.principles)
    stats = {**result.stats.as_dict(),
             "backend_prompts_scored": (backend.stats.scored_prompts - calls_before) if backend else 0}
    context.log.info(f"judge: {result.stats.model_calls} model calls, {result.stats.cache_hits} cache hits")
    yield Output(pairs, output_name="ai_preferences", metadata={
        "n_pairs": len(pairs), "labels": MetadataValue.json(labels), "abstain_reasons": MetadataValue.json(reasons),
        "model_calls": result.stats.model_calls, "cache_hits": result.stats.cache_hits,
        "judge_id": judge_id, "template_version": versions, "stats": MetadataValue.json(stats),
        **({"preference_model": MetadataValue.json(pm_meta)} if pm_meta else {}),
        "preview": MetadataValue.md(markdown_table(pairs[["pair_id", "label", "p_chosen", "confidence", "vote_share",
                                                          "abstain_reason"]])),
        **run.metadata(),
    })
    yield Output(result.principles, output_name="ai_principle_votes", metadata={"n_votes": len(result.principles)})
    for ch in checks:
        yield AssetCheckResult(asset_key="ai_preferences", check_name=ch.name, passed=bool(ch.passed),
                               severity=AssetCheckSeverity.ERROR, description=ch.description,
                               metadata={"value": float(ch.value) if ch.value == ch.value else -1.0})
