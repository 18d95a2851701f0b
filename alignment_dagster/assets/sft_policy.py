"""`sft_policy` [constitution]: SFT on the accepted revisions (TRL SFTTrainer, LoRA by default), stored and
registered in MLflow like the other trained models; a card-only folder when there are too few rows."""

from collections.abc import Iterator

import pandas as pd
from dagster import AssetExecutionContext, AssetIn, Config, Output, asset
from pydantic import Field

from alignment_dagster.assets.model_runs import train_and_register, trainer_overrides
from alignment_dagster.automation import retrain_when_rows_change
from alignment_dagster.backends.identity import model_identity
from alignment_dagster.core.values import ModelDir, scratch_dir
from alignment_dagster.partitions import constitution_partitions
from alignment_dagster.resources.models import ModelBackendResource
from alignment_dagster.resources.profile import RunProfile
from alignment_dagster.resources.storage_io import StorageResource
from alignment_dagster.resources.tracking import MLflowTracking
from alignment_dagster.revision.phase_one import sft_version
from alignment_dagster.training.checkpoints import StorageModelCache
from alignment_dagster.training.presets import Preset, sft_config
from alignment_dagster.training.sft import SFTTrainingConfig, fit_sft_policy, sft_fingerprint, sft_row_digests


class SFTPolicyConfig(Config):
    """Unset fields take the run profile's value, then the preset's (`training.presets`): `cpu` (LoRA on
    SmolLM2, 10 steps of 2 rows, 256 tokens) or `gpu` (bf16, batch 16, 1024 tokens, whole epochs)."""

    preset: Preset = "cpu"
    base_model: str | None = Field(None, description="Model to train; None = the policy_model resource's.")
    max_steps: int | None = Field(None, description="Optimizer steps (-1 = whole epochs); cpu 10, gpu -1.")
    epochs: float = 1.0
    batch_size: int | None = Field(None, description="cpu 2, gpu 16.")
    learning_rate: float | None = Field(None, description="cpu 2e-4, gpu 1e-4.")
    max_length: int | None = Field(None, description="cpu 256, gpu 1024.")
    lora: bool = Field(True, description="False: full fine-tune.")
    lora_r: int | None = None
    save_steps: int | None = Field(None, description="Checkpoint (to storage) every n steps; cpu 5, gpu 50.")
    seed: int = 0
    min_train_rows: int = Field(2, ge=1, description="Fewer accepted revisions: skip training (card only).")
    reuse: bool = Field(True, description="Reuse weights trained on identical rows/config/base.")
    force_retrain: bool = Field(False, description="Train even when the retrain policy would keep the model.")

    def training_config(self, sizes: dict) -> SFTTrainingConfig:
        return sft_config(
            self.preset,
            max_steps=sizes["max_steps"],
            max_length=sizes["max_length"],
            **trainer_overrides(self),
        )


@asset(
    partitions_def=constitution_partitions,
    ins={"sft_dataset": AssetIn()},
    group_name="phase1",
    kinds={"pytorch", "mlflow"},
    pool="training",
    output_required=False,  # nothing when training would be identical to the current model's
    automation_condition=retrain_when_rows_change(rows="sft_dataset"),
)
def sft_policy(
    context: AssetExecutionContext,
    config: SFTPolicyConfig,
    sft_dataset: pd.DataFrame,
    storage: StorageResource,
    policy_model: ModelBackendResource,
    profile: RunProfile,
    mlflow: MLflowTracking,
) -> Iterator[Output[ModelDir]]:
    """The policy fine-tuned on its constitution's accepted revisions (loss on the revision only); resumes
    from its last checkpoint in storage; the model DPO starts from for blends with `start_from: sft`."""
    sizes = profile.sizes("sft_policy", config, ("max_steps", "max_length"))
    training = config.training_config(sizes)
    base_model = config.base_model if config.base_model is not None else policy_model.spec().model
    base_identity = model_identity("transformers", base_model)[1]
    fingerprint = sft_fingerprint(sft_dataset, training, base_identity)
    card = {
        "partition": {"constitution": context.partition_key},
        "dagster_run_id": context.run_id,
        "dataset_version": sft_version(sft_dataset),
        "base_identity": base_identity,
    }
    cache = StorageModelCache(storage.open(), "sft_policy") if config.reuse else None

    def fit(ckpts):
        return fit_sft_policy(
            sft_dataset,
            training,
            base_model,
            scratch_dir("sft_policy"),
            checkpoints=ckpts,
            model_cache=cache,
            fingerprint=fingerprint,
            min_train_rows=config.min_train_rows,
            card=card,
        )

    params = {**config.model_dump(), **sizes, "training": training.__dict__, "fingerprint": fingerprint}
    output = train_and_register(
        context,
        mlflow,
        storage,
        None,
        kind="sft",
        train=sft_dataset,
        fingerprint=fingerprint,
        force=config.force_retrain,
        params=params,
        fit=fit,
        extra_tags={"policy.base": base_identity, "lora": str(training.lora)},
        digests=sft_row_digests(sft_dataset),
        base_identity=base_identity,
    )
    if output is not None:
        yield output
