"""`sft_evals` [constitution]: the SFT policy of phase 1 against its base model, judged under the
constitution (`evaluation.policy_vs_base`, as `evals` does for the DPO policies, without a reward model)."""

import pandas as pd
from dagster import AssetExecutionContext, AssetIn, Config, asset
from pydantic import Field

from alignment_dagster.automation import evaluate_after_training
from alignment_dagster.core.values import ModelDir
from alignment_dagster.evaluation.policy_vs_base import (
    EvalInputs,
    EvalSettings,
    evaluate_policy_vs_base,
)
from alignment_dagster.partitions import constitution_partitions
from alignment_dagster.resources.compute import ComputeResource
from alignment_dagster.resources.models import ModelBackendResource
from alignment_dagster.resources.profile import RunProfile
from alignment_dagster.resources.storage_io import StorageResource
from alignment_dagster.resources.tracking import MLflowTracking
from alignment_dagster.specs.constitution import ConstitutionVersion


class SFTEvalsConfig(Config):
    """Unset sizes (None) come from the run profile (`core.profiles`, ALIGNMENT_PROFILE)."""

    max_prompts: int | None = Field(
        None, ge=1, description="Eval-split prompts (round-robin over categories)."
    )
    max_new_tokens: int | None = Field(None, ge=1, description="Tokens per reply, policy and base (greedy).")
    tie_margin: float = Field(0.05, ge=0, lt=0.5, description="Per principle: |p - 0.5| below this is a tie.")
    shard_size: int = Field(64, ge=1, description="Judge prompts per cached judgment shard.")


@asset(
    partitions_def=constitution_partitions,
    ins={
        "constitution": AssetIn(),
        "prompt_pool": AssetIn(),
        "sft_policy": AssetIn(),
    },
    group_name="evals",
    kinds={"mlflow", "parquet"},
    automation_condition=evaluate_after_training(models=("sft_policy",)),
)
def sft_evals(
    context: AssetExecutionContext,
    config: SFTEvalsConfig,
    constitution: ConstitutionVersion,
    prompt_pool: pd.DataFrame,
    sft_policy: ModelDir,
    policy_model: ModelBackendResource,
    judge_model: ModelBackendResource,
    storage: StorageResource,
    profile: RunProfile,
    mlflow: MLflowTracking,
    compute: ComputeResource,
) -> pd.DataFrame:
    """SFT policy vs base on eval prompts it never trained on, both orders judged under the constitution:
    win rates with 95% CIs per principle and category, lengths, refusals, cost; a comparison row
    (`blend` = `sft_policy`)."""
    spec = policy_model.spec()
    sizes = profile.sizes("sft_evals", config, ("max_prompts", "max_new_tokens"))

    stage = compute.backends(context, policy_model.backend, spec, storage.open(), storage.s3)

    # No human labels: the judge's agreement with people is the DPO evals' (and ai_preferences') to report,
    # and an input on human_labels would make new labels rerun the SFT evals for nothing.
    none = pd.DataFrame(columns=["pair_id", "audit", "p_a", "label", "choice", "annotator"])
    inputs = EvalInputs(constitution.spec, prompt_pool, none, none, none, sft_policy.path, None)
    settings = EvalSettings(
        sizes["max_prompts"], sizes["max_new_tokens"], config.tie_margin, config.shard_size
    )
    result = evaluate_policy_vs_base(
        inputs, stage.for_evals(judge_model), storage.open(), settings, f"sft_policy {context.partition_key}"
    )
    result.report.add(**stage.job_summary())
    result.report.params.update({**config.model_dump(), **sizes, "policy_dir": str(sft_policy.path)})
    # The comparison reads one row per constitution x blend; this one is the SFT policy's.
    result.report.tags["dagster.partition.constitution"] = context.partition_key
    context.add_output_metadata(mlflow.record(context, result.report))
    return result.table
