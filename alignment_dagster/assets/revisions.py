"""`revisions` [constitution]: Constitutional AI phase 1's critique -> revision chains, each revision judged
against the reply it replaces by the constitution's judge (`revision.phase_one.build_revisions`)."""

import pandas as pd
from dagster import AssetExecutionContext, AssetIn, Config, asset
from pydantic import Field

from alignment_dagster.automation import revise_new_versions
from alignment_dagster.partitions import constitution_partitions
from alignment_dagster.resources.models import ModelBackendResource
from alignment_dagster.resources.profile import RunProfile
from alignment_dagster.resources.storage_io import StorageResource
from alignment_dagster.resources.tracking import MLflowTracking
from alignment_dagster.revision.call_cache import CallCache
from alignment_dagster.revision.chains import ChainSettings
from alignment_dagster.revision.judging import RevisionJudge
from alignment_dagster.revision.phase_one import build_revisions
from alignment_dagster.specs.constitution import ConstitutionVersion


class RevisionsConfig(Config):
    """Unset sizes (None) come from the run profile (`core.profiles`, ALIGNMENT_PROFILE); the rounds and the
    gate's thresholds are the constitution's (`revision:`)."""

    max_prompts: int | None = Field(
        None, ge=0, description="Training-split red-team and helpful prompts, round-robin (0 = all)."
    )
    max_new_tokens: int | None = Field(
        None, ge=1, description="Tokens per first reply, critique and revision."
    )
    categories: list[str] = Field(
        default_factory=lambda: ["red-team", "helpful"], description="Prompt categories revised (slugs)."
    )
    temperature: float = Field(0.0, ge=0.0, description="0: greedy (a chain is a function of its inputs).")
    seed: int = 0
    shard_size: int = Field(8, ge=1, description="Model calls per cached shard (resume granularity).")
    judge_shard_size: int = Field(64, ge=1, description="Judge prompts per cached judgment shard.")


@asset(
    partitions_def=constitution_partitions,
    ins={"constitution": AssetIn(), "prompt_pool": AssetIn()},
    group_name="phase1",
    kinds={"parquet", "mlflow"},
    automation_condition=revise_new_versions(),
)
def revisions(
    context: AssetExecutionContext,
    config: RevisionsConfig,
    constitution: ConstitutionVersion,
    prompt_pool: pd.DataFrame,
    policy_model: ModelBackendResource,
    judge_model: ModelBackendResource,
    storage: StorageResource,
    profile: RunProfile,
    mlflow: MLflowTracking,
) -> pd.DataFrame:
    """Per training prompt the policy's first reply, then up to K rounds of (principle drawn by weight,
    critique, revision), every revision judged against the reply it replaces (both orders) and gated;
    each model call cached by its exact input, so an edited principle reruns only the rounds that drew it."""
    sizes = profile.sizes("revisions", config, ("max_prompts", "max_new_tokens"))
    store = storage.open()
    spec = constitution.spec
    judge = RevisionJudge(spec, judge_model.backend, store, mlflow.tracking_uri, config.judge_shard_size)
    settings = ChainSettings(sizes["max_new_tokens"], config.temperature, config.seed, config.shard_size)
    try:
        result = build_revisions(
            spec,
            prompt_pool,
            policy_model.backend,
            judge,
            lambda identity: CallCache(store, identity),
            settings,
            sizes["max_prompts"],
            tuple(config.categories),
        )
    finally:
        judge.close()
    report = result.report(spec)
    report.params.update({**config.model_dump(), **sizes, "revision": spec.revision.model_dump()})
    context.add_output_metadata(mlflow.record(context, report))
    summary = report.summary
    context.log.info(
        f"revisions[{context.partition_key}]: {summary['accepted']} of {summary['rounds']} revisions "
        f"accepted in {summary['chains']} chains"
    )
    return result.table
