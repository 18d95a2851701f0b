"""`dpo_policy`: weighted DPO per constitution x blend (LoRA by default), stored and registered in MLflow.

Like `reward_model`, a blend with too few training rows materializes a card-only folder (`trained: false`);
so does a blend that starts from an sft_policy that is not trained (`start_from: sft`).
"""

from collections.abc import Iterator
from typing import Literal

import pandas as pd
from dagster import AssetDep, AssetExecutionContext, Config, Output, asset
from pydantic import Field

from alignment_dagster.assets.model_runs import partition_card, train_and_register, trainer_overrides
from alignment_dagster.automation import retrain_when_rows_change
from alignment_dagster.core.values import ModelDir, scratch_dir
from alignment_dagster.partitions import BY_CONSTITUTION, constitution_blend_partitions
from alignment_dagster.resources.compute import ComputeResource
from alignment_dagster.resources.libraries import BlendLibrary
from alignment_dagster.resources.models import ModelBackendResource
from alignment_dagster.resources.profile import RunProfile
from alignment_dagster.resources.storage_io import StorageResource
from alignment_dagster.resources.tracking import MLflowTracking
from alignment_dagster.training.checkpoints import StorageModelCache
from alignment_dagster.training.dpo import DPOTrainingConfig
from alignment_dagster.training.fingerprints import training_fingerprint
from alignment_dagster.training.presets import Preset, dpo_config
from alignment_dagster.training.sft import fit_policy_from, policy_start
from alignment_dagster.training.stages import split_rows


class DPOPolicyConfig(Config):
    """Policy training with weighted DPO. Unset fields take the run profile's value (`core.profiles`), then
    the preset's (`training.presets`): `cpu` (LoRA on SmolLM2, 10 steps of 2 pairs, 256 tokens) or `gpu`
    (bf16, gradient checkpointing, batch 16 x 2, 1024 tokens, whole epochs)."""

    preset: Preset = "cpu"
    base_model: str | None = Field(
        None, description="Model to train; None = the policy_model resource's model."
    )
    max_steps: int | None = Field(None, description="Optimizer steps (-1 = whole epochs); cpu 10, gpu -1.")
    epochs: float = 1.0
    batch_size: int | None = Field(None, description="cpu 2, gpu 16.")
    gradient_accumulation_steps: int | None = None
    learning_rate: float | None = Field(None, description="cpu 2e-4 (few LoRA steps), gpu 2e-5.")
    beta: float = 0.1
    loss_type: str = "sigmoid"
    max_length: int | None = Field(None, description="cpu 256, gpu 1024.")
    truncation_mode: Literal["keep_end", "keep_start"] = Field(
        "keep_end",
        description="Past max_length: keep_end cuts the oldest conversation tokens; keep_start cuts "
        "the reply, and rows whose prompt fills max_length are left out (counted).",
    )
    lora: bool = Field(True, description="False: full fine-tune.")
    lora_r: int | None = None
    weighted: bool = Field(True, description="Weight each pair's loss by the blend's weight column.")
    save_steps: int | None = Field(None, description="Checkpoint (to storage) every n steps; cpu 5, gpu 50.")
    seed: int = 0
    min_train_rows: int = Field(4, ge=1, description="Fewer training rows: skip training (card-only folder).")
    eval_limit: int | None = Field(
        None, ge=0, description="Eval-split pairs for implicit-reward accuracy (0 = all)."
    )
    reuse: bool = Field(
        True, description="Reuse weights trained on identical rows/config/base (any partition)."
    )

    force_retrain: bool = Field(
        False, description="Train even when the blend's retrain policy would keep the current model."
    )

    def training_config(self, sizes: dict | None = None) -> DPOTrainingConfig:
        """The trainer's settings; `sizes` (the run profile's, resolved by the asset) or this config's."""
        sizes = sizes or {"max_steps": self.max_steps, "max_length": self.max_length}
        return dpo_config(
            self.preset,
            max_steps=sizes["max_steps"],
            max_length=sizes["max_length"],
            **trainer_overrides(self),
        )


@asset(
    partitions_def=constitution_blend_partitions,
    # Read from storage only for blends that start from it (`start_from: sft`): not an input, so the
    # other blends never wait for phase 1.
    deps=[AssetDep("sft_policy", partition_mapping=BY_CONSTITUTION)],
    group_name="training",
    kinds={"pytorch", "mlflow"},
    pool="training",
    output_required=False,  # nothing when training would be identical to the current model's
    automation_condition=retrain_when_rows_change(start="sft_policy"),
)
def dpo_policy(
    context: AssetExecutionContext,
    config: DPOPolicyConfig,
    preference_dataset: pd.DataFrame,
    storage: StorageResource,
    blend_library: BlendLibrary,
    policy_model: ModelBackendResource,
    profile: RunProfile,
    mlflow: MLflowTracking,
    compute: ComputeResource,
) -> Iterator[Output[ModelDir]]:
    """Policy trained with weighted DPO (LoRA by default), from the base or, when the blend says so, from the
    constitution version's sft_policy (merged; the SFT model is DPO's reference); resumes from its last
    checkpoint in storage; keeps its model when the blend's retrain policy finds too little new data."""
    keys = context.partition_key.keys_by_dimension
    _, _, blend = blend_library.find(keys["blend"])
    sizes = profile.sizes("dpo_policy", config, ("max_steps", "max_length", "eval_limit"))
    training = config.training_config(sizes)
    base_model = config.base_model if config.base_model is not None else policy_model.spec().model
    sft_dir = storage.stored_model("sft_policy", keys["constitution"]) if blend.start_from == "sft" else None
    start = policy_start(blend.start_from, base_model, sft_dir)
    train, _ = split_rows(preference_dataset)
    fingerprint = training_fingerprint(train, training, start.identity)
    card = partition_card(context, blend, preference_dataset, base_identity=start.identity, **start.card)
    cache = StorageModelCache(storage.open(), "dpo_policy") if config.reuse else None

    def fit(ckpts):
        return fit_policy_from(
            start,
            preference_dataset,
            training,
            scratch_dir("dpo_policy"),
            checkpoints=ckpts,
            model_cache=cache,
            fingerprint=fingerprint,
            min_train_rows=config.min_train_rows,
            eval_limit=sizes["eval_limit"] or None,
            card=card,
            trainer=compute.trainer(context, "dpo", ckpts.store, storage.s3, ckpts),
        )

    params = {**config.model_dump(), **sizes, "training": training.__dict__, "fingerprint": fingerprint}
    extra = {"policy.base": start.identity, "lora": str(training.lora), "policy.start": blend.start_from}
    output = train_and_register(
        context,
        mlflow,
        storage,
        blend,
        kind="policy",
        train=train,
        fingerprint=fingerprint,
        force=config.force_retrain,
        params=params,
        fit=fit,
        extra_tags=extra,
        base_identity=start.identity,
    )
    if output is not None:
        yield output
