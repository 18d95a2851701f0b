"""`reward_model`: TRL RewardTrainer per constitution x blend, stored as a model folder, registered in MLflow.

A blend with fewer than `min_train_rows` training rows still materializes: its folder holds only
`alignment.json` with `trained: false` and the reason (shown in the metadata), and every loader raises
`ModelNotTrained`, so evals can report the partition as untrained instead of failing the run.
"""

import pandas as pd
from dagster import AssetExecutionContext, Config, asset
from pydantic import Field

from alignment_dagster.assets.model_runs import checkpoints, train_and_register
from alignment_dagster.core.values import ModelDir, scratch_dir
from alignment_dagster.partitions import constitution_blend_partitions
from alignment_dagster.resources.datasets import ImportedPairs
from alignment_dagster.resources.libraries import BlendLibrary
from alignment_dagster.resources.storage_io import StorageResource
from alignment_dagster.resources.tracking import MLflowTracking
from alignment_dagster.training.artifacts import card_context
from alignment_dagster.training.checkpoints import StorageModelCache
from alignment_dagster.training.fingerprints import reward_fingerprint
from alignment_dagster.training.presets import Preset, reward_config
from alignment_dagster.training.reward import RewardTrainingConfig
from alignment_dagster.training.stages import fit_reward_model, heldout_hh_pairs, split_rows


class RewardModelConfig(Config):
    """Reward-model training. Unset fields take the preset's value (`training.presets`): `cpu` (the demo:
    MiniLM, 30 steps of 8, 128 tokens) or `gpu` (bf16, gradient checkpointing, batch 32, whole epochs, 512
    tokens). Checkpoints go to storage every `save_steps`, so a killed run resumes there."""

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
    heldout_sources: list[str] | None = Field(
        None,
        description="Human-labelled pair files (HH-RLHF JSONL) for held-out accuracy, training prompts left "
        "out; empty: the `imported_pairs` resource's files.",
    )
    heldout_limit: int = Field(100, ge=0, description="Held-out pairs scored (0 = none).")
    reuse: bool = Field(
        True, description="Reuse weights trained on identical rows/config/backbone (any partition)."
    )

    def training_config(self) -> RewardTrainingConfig:
        return reward_config(
            self.preset,
            **self.model_dump(
                include={
                    "backbone",
                    "max_steps",
                    "epochs",
                    "batch_size",
                    "learning_rate",
                    "max_length",
                    "lora",
                    "use_margin",
                    "save_steps",
                    "seed",
                }
            ),
        )


@asset(partitions_def=constitution_blend_partitions, group_name="training", kinds={"pytorch", "mlflow"})
def reward_model(
    context: AssetExecutionContext,
    config: RewardModelConfig,
    preference_dataset: pd.DataFrame,
    storage: StorageResource,
    blend_library: BlendLibrary,
    imported_pairs: ImportedPairs,
    mlflow: MLflowTracking,
) -> ModelDir:
    """Reward model (TRL RewardTrainer, margin from the blend) with accuracy on eval, human and held-out HH
    pairs; resumes from its last checkpoint in storage."""
    keys = context.partition_key.keys_by_dimension
    _, _, blend = blend_library.find(keys["blend"])
    training = config.training_config()
    train, _ = split_rows(preference_dataset)
    fingerprint = reward_fingerprint(train, training)
    sources = config.heldout_sources if config.heldout_sources is not None else imported_pairs.sources
    heldout = None
    if sources and config.heldout_limit and len(train) >= config.min_train_rows:
        heldout = heldout_hh_pairs(
            sources, storage.read_uri, train.get("prompt_id", []), config.heldout_limit, log=context.log
        )
    card = card_context(keys["constitution"], keys["blend"], blend.name, blend.content_hash, context.run_id)
    cache = StorageModelCache(storage.open(), "reward_model") if config.reuse else None

    def fit(ckpts):
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
        )

    tags = {"blend.name": blend.name, "blend.hash": blend.content_hash}
    params = {**config.model_dump(), "training": training.__dict__, "fingerprint": fingerprint}
    return train_and_register(
        context,
        mlflow,
        checkpoints(context, storage, fingerprint),
        kind="reward",
        store=storage.open(),
        tags=tags,
        params=params,
        register_tags=tags,
        fit=fit,
    )
