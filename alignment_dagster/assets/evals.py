"""`evals` (constitution x blend): the trained policy against its base model (`evaluation.policy_vs_base`)."""

import tempfile

import pandas as pd
from dagster import AssetExecutionContext, AssetIn, Config, asset
from pydantic import Field

from alignment_dagster.automation import evaluate_after_training
from alignment_dagster.core.values import ModelDir
from alignment_dagster.evaluation.length_control import LC_MIN_PROMPTS
from alignment_dagster.evaluation.metrics import Prices
from alignment_dagster.evaluation.policy_vs_base import (
    EvalInputs,
    EvalSettings,
    evaluate_policy_vs_base,
)
from alignment_dagster.evaluation.self_judging import load_reference_judge
from alignment_dagster.partitions import BY_CONSTITUTION, constitution_blend_partitions
from alignment_dagster.resources.compute import ComputeResource
from alignment_dagster.resources.models import ModelBackendResource
from alignment_dagster.resources.profile import RunProfile
from alignment_dagster.resources.storage_io import StorageResource
from alignment_dagster.resources.tracking import MLflowTracking
from alignment_dagster.specs.constitution import ConstitutionVersion


class EvalsConfig(Config):
    """Unset sizes (None) come from the run profile (`core.profiles`, ALIGNMENT_PROFILE)."""

    max_prompts: int | None = Field(
        None, ge=1, description="Eval-split prompts (round-robin over categories)."
    )
    max_new_tokens: int | None = Field(
        None, ge=1, description="Tokens per reply, policy and base alike (greedy)."
    )
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
    lc_min_prompts: int = Field(
        LC_MIN_PROMPTS, ge=2, description="Fewer eval prompts: the length-controlled win rate is n/a."
    )
    self_preference_prompts: int = Field(
        0,
        ge=0,
        description="HH prompts (imported pairs with known labels) on which the policy's own reply is judged "
        "against the humans' preferred reply, by this judge and by self_preference_reference; 0: not "
        "measured.",
    )
    self_preference_reference: str | None = Field(
        None,
        description="Reference judge of another family for self-preference: a preference model (a folder, a "
        "folder in storage, models:/<name>/<version>), best one trained on human labels only.",
    )

    def settings(self, max_prompts: int, max_new_tokens: int) -> EvalSettings:
        prices = Prices(
            self.price_per_1k_prompt_tokens,
            self.price_per_1k_generated_tokens,
            self.price_per_accelerator_hour,
            self.price_per_human_label,
        )
        return EvalSettings(
            max_prompts,
            max_new_tokens,
            self.tie_margin,
            self.shard_size,
            self.generation_shard_size,
            prices,
            self.lc_min_prompts,
            self.self_preference_prompts,
        )


@asset(
    partitions_def=constitution_blend_partitions,
    ins={
        "constitution": AssetIn(partition_mapping=BY_CONSTITUTION),
        "ai_preferences": AssetIn(partition_mapping=BY_CONSTITUTION),
        "edge_cases": AssetIn(partition_mapping=BY_CONSTITUTION),
        "human_labels": AssetIn(partition_mapping=BY_CONSTITUTION),
        "prompt_pool": AssetIn(),
        "response_pairs": AssetIn(),
        "known_labels": AssetIn(),
        "dpo_policy": AssetIn(),
        "reward_model": AssetIn(),
    },
    group_name="evals",
    kinds={"mlflow", "parquet"},
    automation_condition=evaluate_after_training(),
)
def evals(
    context: AssetExecutionContext,
    config: EvalsConfig,
    constitution: ConstitutionVersion,
    ai_preferences: pd.DataFrame,
    edge_cases: pd.DataFrame,
    human_labels: pd.DataFrame,
    prompt_pool: pd.DataFrame,
    response_pairs: pd.DataFrame,
    known_labels: pd.DataFrame,
    dpo_policy: ModelDir,
    reward_model: ModelDir,
    policy_model: ModelBackendResource,
    judge_model: ModelBackendResource,
    storage: StorageResource,
    profile: RunProfile,
    mlflow: MLflowTracking,
    compute: ComputeResource,
) -> pd.DataFrame:
    """Policy vs base on eval prompts, judged under the partition's constitution (both orders): raw and
    length-controlled win rates with 95% intervals per principle and category, whether the judge is the
    policy's own model (and its self-preference where a reference judge is configured), reward scores,
    lengths, refusals, cost and judge quality."""
    store = storage.open()
    sizes = profile.sizes("evals", config, ("max_prompts", "max_new_tokens"))
    with tempfile.TemporaryDirectory(prefix="alignment-ref-") as workdir:
        ref = config.self_preference_reference

        def reference():
            return load_reference_judge(ref, store, mlflow.uri, workdir) if ref else None

        inputs = EvalInputs(
            constitution.spec,
            prompt_pool,
            ai_preferences,
            edge_cases,
            human_labels,
            dpo_policy.path,
            reward_model.path,
            response_pairs,
            known_labels,
        )
        stage = compute.backends(context, policy_model.backend, policy_model.spec(), store, storage.s3)
        result = evaluate_policy_vs_base(
            inputs,
            stage.for_evals(judge_model, reference),
            store,
            config.settings(**sizes),
            str(context.partition_key),
        )
    result.report.add(**stage.job_summary())
    result.report.params.update({**config.model_dump(), **sizes, "policy_dir": str(dpo_policy.path)})
    context.add_output_metadata(mlflow.record(context, result.report))
    log_outcome(context, result.report.summary, len(result.table))
    return result.table


def log_outcome(context: AssetExecutionContext, summary: dict, n_prompts: int) -> None:
    if summary["trained"]:
        context.log.info(
            f"evals[{context.partition_key}]: win {summary['win_rate']:.2f} {summary['win_ci']} over "
            f"{n_prompts} prompts"
        )
    else:
        context.log.warning(
            f"evals[{context.partition_key}]: policy not trained ({summary['skip_reason']}); "
            "nothing to compare"
        )
