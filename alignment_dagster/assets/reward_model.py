"""`reward_model`: TRL RewardTrainer per constitution x blend, stored as a model folder, registered in MLflow.

A blend with fewer than `min_train_rows` training rows still materializes: its folder holds only
`alignment.json` with `trained: false` and the reason (shown in the metadata), and every loader raises
`ModelNotTrained`, so evals can report the partition as untrained instead of failing the run.
"""

from collections.abc import Iterator

import pandas as pd
from dagster import AssetExecutionContext, AssetIn, Config, Output, asset
from pydantic import Field

from alignment_dagster.assets.model_runs import partition_card, train_and_register
from alignment_dagster.automation import retrain_when_rows_change
from alignment_dagster.core.values import ModelDir, scratch_dir
from alignment_dagster.data.blending import known_rows
from alignment_dagster.data.pairs import HELDOUT
from alignment_dagster.partitions import constitution_blend_partitions
from alignment_dagster.resources.compute import ComputeResource
from alignment_dagster.resources.libraries import BlendLibrary
from alignment_dagster.resources.profile import RunProfile
from alignment_dagster.resources.storage_io import StorageResource
from alignment_dagster.resources.tracking import MLflowTracking
from alignment_dagster.training.checkpoints import StorageModelCache
from alignment_dagster.training.fingerprints import reward_fingerprint
from alignment_dagster.training.presets import Preset, reward_config
from alignment_dagster.training.reward import RewardTrainingConfig
from alignment_dagster.training.stages import fit_reward_model, split_rows

TRAINING_FIELDS = {
    "backbone",
    "epochs",
    "batch_size",
    "learning_rate",
    "max_length",
    "lora",
    "use_margin",
    "save_steps",
    "seed",
}


class RewardModelConfig(Config):
    """Reward-model training. Unset fields take the run profile's value (`core.profiles`), then the preset's
    (`training.presets`): `cpu` (MiniLM, 30 steps of 8, 128 tokens) or `gpu` (bf16, gradient checkpointing,
    batch 32, whole epochs, 512 tokens). Checkpoints go to storage every `save_steps`, so a killed run resumes
    there."""

    preset: Preset = "cpu"
    backbone: str | None = Field(
        None, description="HF sequence-classification model; None = embedded MiniLM."
    )
    max_steps: int | None = Field(None, description="Optimizer steps (-1 = whole epochs); cpu 30, gpu -1.")
    epochs: float = 1.0
    batch_size: int | None = Field(None, description="cpu 8, gpu 32.")
    learning_rate: float = 1e-4
    max_length: int | None = Field(None, description="Tokens per (conversation, reply); cpu 128, gpu 512.")
    lora: bool = False
    use_margin: bool = Field(True, description="Pass the blend's margin column to RewardTrainer.")
    save_steps: int | None = Field(None, description="Checkpoint (to storage) every n steps; cpu 25, gpu 50.")
    seed: int = 0
    min_train_rows: int = Field(4, ge=1, description="Fewer training rows: skip training (card-only folder).")
    heldout_limit: int | None = Field(None, ge=0, description="Held-out known pairs scored (0 = none).")
    reuse: bool = Field(
        True, description="Reuse weights trained on identical rows/config/backbone (any partition)."
    )
    force_retrain: bool = Field(
        False, description="Train even when the blend's retrain policy would keep the current model."
    )

    def training_config(self, max_steps: int | None = None) -> RewardTrainingConfig:
        return reward_config(self.preset, max_steps=max_steps, **self.model_dump(include=TRAINING_FIELDS))


@asset(
    partitions_def=constitution_blend_partitions,
    ins={"preference_dataset": AssetIn(), "known_labels": AssetIn()},
    group_name="training",
    kinds={"pytorch", "mlflow"},
    pool="training",
    output_required=False,  # nothing when training would be identical to the current model's
    automation_condition=retrain_when_rows_change(),
)
def reward_model(
    context: AssetExecutionContext,
    config: RewardModelConfig,
    preference_dataset: pd.DataFrame,
    known_labels: pd.DataFrame,
    storage: StorageResource,
    blend_library: BlendLibrary,
    profile: RunProfile,
    mlflow: MLflowTracking,
    compute: ComputeResource,
) -> Iterator[Output[ModelDir]]:
    """Reward model (TRL RewardTrainer, margin from the blend) with accuracy on eval, human and held-out known
    pairs; resumes from its last checkpoint in storage; keeps its model when the retrain policy says so."""
    keys = context.partition_key.keys_by_dimension
    _, _, blend = blend_library.find(keys["blend"])
    sizes = profile.sizes("reward_model", config, ("max_steps", "heldout_limit"))
    training = config.training_config(sizes["max_steps"])
    train, _ = split_rows(preference_dataset)
    fingerprint = reward_fingerprint(train, training)
    rows = known_rows(known_labels, HELDOUT, exclude_prompt_ids=set(train.get("prompt_id", [])))
    heldout = pd.DataFrame(rows[: sizes["heldout_limit"]]) if sizes["heldout_limit"] else None
    card = partition_card(context, blend, preference_dataset)
    cache = StorageModelCache(storage.open(), "reward_model") if config.reuse else None

    def fit(ckpts):
        trainer = compute.trainer(context, "reward", ckpts.store, storage.s3, ckpts)
        return fit_reward_model(
            preference_dataset,
            training,
            scratch_dir("reward_model"),
            heldout=heldout,
            min_train_rows=config.min_train_rows,
            checkpoints=ckpts,
            model_cache=cache,
            fingerprint=fingerprint,
            card=card,
            trainer=trainer,
        )

    params = {**config.model_dump(), **sizes, "training": training.__dict__, "fingerprint": fingerprint}
    output = train_and_register(
        context,
        mlflow,
        storage,
        blend,
        kind="reward",
        train=train,
        fingerprint=fingerprint,
        force=config.force_retrain,
        params=params,
        fit=fit,
    )
    if output is not None:
        yield output
