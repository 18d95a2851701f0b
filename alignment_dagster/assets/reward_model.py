"""`reward_model` and `dpo_policy`: trained per constitution x blend, stored as model folders, registered in MLflow.

A blend with fewer than `min_train_rows` training rows still materializes: its folder holds only
`alignment.json` with `trained: false` and the reason (shown in the metadata), and every loader raises
`ModelNotTrained`, so evals can report the partition as untrained instead of failing the run.
"""

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import pandas as pd
from dagster import AssetExecutionContext, Config, MetadataValue, asset
from pydantic import Field

from alignment_dagster.core.reporting import png_markdown
from alignment_dagster.core.settings import Settings
from alignment_dagster.partitions import constitution_blend_partitions
from alignment_dagster.resources.libraries import BlendLibrary
from alignment_dagster.resources.storage_io import ModelDir, StorageResource, partition_path
from alignment_dagster.resources.tracking import MLflowTracking
from alignment_dagster.training.artifacts import log_and_register, registered_model_name
from alignment_dagster.training.checkpoints import StorageCheckpoints, StorageModelCache
from alignment_dagster.training.dpo import DPOTrainingConfig
from alignment_dagster.training.plots import reward_scatter_png
from alignment_dagster.training.reward import RewardTrainingConfig
from alignment_dagster.training.stages import (
    fit_reward_model,
    heldout_hh_pairs,
    reward_fingerprint,
    split_rows,
)


class RewardModelConfig(Config):
    """Reward-model training. Unset fields take the preset's value: `cpu` (demo: MiniLM, 30 steps) or
    `gpu` (bf16, gradient checkpointing, batch 32, full epochs, 512 tokens). Checkpoints go to storage every
    `save_steps`, so a killed run resumes there."""

    preset: Literal["cpu", "gpu"] = "cpu"
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
    # cpu 25: a MiniLM checkpoint with its optimizer state is ~260 MiB and ~2 s to write, against ~0.4 s a
    # step, so every 5 steps would double the demo's 30-step training.
    save_steps: int | None = Field(None, description="Checkpoint (to storage) every n steps; cpu 25, gpu 50.")
    seed: int = 0
    min_train_rows: int = Field(4, ge=1, description="Fewer training rows: skip training (card-only folder).")
    heldout_sources: list[str] = Field(
        default_factory=lambda: list(Settings.from_env().import_pairs),
        description="Human-labelled pair files (HH-RLHF JSONL) for held-out accuracy; training prompts left out.",
    )
    heldout_limit: int = Field(100, ge=0, description="Held-out pairs scored (0 = none).")
    reuse: bool = Field(
        True, description="Reuse weights trained on identical rows/config/backbone (any partition)."
    )

    def training_config(self) -> RewardTrainingConfig:
        gpu = self.preset == "gpu"
        return RewardTrainingConfig(
            backbone=self.backbone,
            epochs=self.epochs,
            learning_rate=self.learning_rate,
            lora=self.lora,
            use_margin=self.use_margin,
            seed=self.seed,
            max_steps=self.max_steps if self.max_steps is not None else (-1 if gpu else 30),
            batch_size=self.batch_size or (32 if gpu else 8),
            max_length=self.max_length or (512 if gpu else 128),
            save_steps=self.save_steps if self.save_steps is not None else (50 if gpu else 25),
            bf16=gpu,
            gradient_checkpointing=gpu,
        )


class DPOPolicyConfig(Config):
    """Policy training with weighted DPO. Unset fields take the preset's value: `cpu` (demo: LoRA on
    SmolLM2, 10 steps of 2 pairs, 256 tokens) or `gpu` (`DPOTrainingConfig.gpu_preset`: bf16, gradient
    checkpointing, batch 16 x 2, 1024 tokens, whole epochs)."""

    preset: Literal["cpu", "gpu"] = "cpu"
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
    eval_limit: int = Field(32, ge=0, description="Eval-split pairs for implicit-reward accuracy (0 = all).")
    reuse: bool = Field(
        True, description="Reuse weights trained on identical rows/config/base (any partition)."
    )

    def training_config(self) -> DPOTrainingConfig:
        if self.preset == "gpu":
            preset = DPOTrainingConfig.gpu_preset(save_steps=50)
        else:
            preset = DPOTrainingConfig(
                max_steps=10, batch_size=2, max_length=256, learning_rate=2e-4, save_steps=5, logging_steps=1
            )
        overrides = {
            k: v
            for k, v in {
                "max_steps": self.max_steps,
                "batch_size": self.batch_size,
                "learning_rate": self.learning_rate,
                "max_length": self.max_length,
                "lora_r": self.lora_r,
                "save_steps": self.save_steps,
                "gradient_accumulation_steps": self.gradient_accumulation_steps,
            }.items()
            if v is not None
        }
        base = {
            **preset.__dict__,
            "epochs": self.epochs,
            "beta": self.beta,
            "loss_type": self.loss_type,
            "lora": self.lora,
            "weighted": self.weighted,
            "seed": self.seed,
            "truncation_mode": self.truncation_mode,
        }
        return DPOTrainingConfig(**{**base, **overrides})


def _work_dir(asset_name: str) -> Path:
    # The IO manager copies the returned folder into storage after the asset returns, so the scratch
    # folder must outlive this function; it goes when the step's process exits.
    path = Path(tempfile.mkdtemp(prefix=f"alignment-{asset_name}-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def _checkpoints(context: AssetExecutionContext, storage: StorageResource, fingerprint: str):
    """This training's checkpoints (`checkpoints/<asset>/<constitution>/<blend>/<fingerprint>`), after
    dropping this partition's checkpoints of earlier data or configs, which can never be resumed."""
    asset = context.asset_key.to_user_string()
    ckpts = StorageCheckpoints(
        storage.open(), f"checkpoints/{asset}/{partition_path(context.partition_key)}/{fingerprint}"
    )
    stale = ckpts.clear_stale()
    if stale:
        context.log.info(f"removed checkpoints of earlier data/configs: {stale}")
    return ckpts


def _card_context(context: AssetExecutionContext, blend) -> dict:
    keys = context.partition_key.keys_by_dimension
    return {
        "partition": {"constitution": keys["constitution"], "blend": keys["blend"]},
        "blend_name": blend.name,
        "blend_hash": blend.content_hash,
        "dagster_run_id": context.run.run_id,
    }


def _skipped(context: AssetExecutionContext, outcome, run) -> ModelDir:
    reason = outcome.card["skip_reason"]
    context.log.warning(
        f"{context.asset_key.to_user_string()}[{context.partition_key}] not trained: {reason}"
    )
    run.set_tags({"alignment.trained": "false"})
    run.log_text("skip_reason.txt", reason)
    context.add_output_metadata({"trained": False, "skip_reason": reason, **run.metadata()})
    return ModelDir(outcome.model_dir)


@asset(partitions_def=constitution_blend_partitions, group_name="training", kinds={"pytorch", "mlflow"})
def reward_model(
    context: AssetExecutionContext,
    config: RewardModelConfig,
    preference_dataset: pd.DataFrame,
    storage: StorageResource,
    blend_library: BlendLibrary,
    mlflow: MLflowTracking,
) -> ModelDir:
    """Reward model (TRL RewardTrainer, margin from the blend) with accuracy on eval, human and held-out HH
    pairs; resumes from its last checkpoint in storage."""
    keys = context.partition_key.keys_by_dimension
    _, _, blend = blend_library.find(keys["blend"])
    cfg = config.training_config()
    train, _ = split_rows(preference_dataset)
    fingerprint = reward_fingerprint(train, cfg)
    ckpts = _checkpoints(context, storage, fingerprint)
    heldout = None
    if config.heldout_sources and config.heldout_limit and len(train) >= config.min_train_rows:
        heldout = heldout_hh_pairs(
            config.heldout_sources,
            storage.read_uri,
            train.get("prompt_id", []),
            config.heldout_limit,
            log=context.log,
        )
    with mlflow.asset_run(context, tags={"blend.name": blend.name, "blend.hash": blend.content_hash}) as run:
        run.log_params({**config.model_dump(), "training": cfg.__dict__, "fingerprint": fingerprint})
        cache = StorageModelCache(storage.open(), "reward_model") if config.reuse else None
        outcome = fit_reward_model(
            preference_dataset,
            cfg,
            _work_dir("reward_model"),
            heldout=heldout,
            min_train_rows=config.min_train_rows,
            card=_card_context(context, blend),
            checkpoints=ckpts,
            model_cache=cache,
            fingerprint=fingerprint,
        )
        if not outcome.card.get("trained"):
            return _skipped(context, outcome, run)
        metrics = outcome.card["metrics"]
        run.log_metrics(metrics)
        for entry in outcome.log_history:
            if "loss" in entry:
                run.log_metrics({"train_loss": entry["loss"]}, step=int(entry["step"]))
        png = reward_scatter_png(outcome.scores, f"reward_model [{context.partition_key}]")
        run.log_figure("chosen_vs_rejected", png)
        name = registered_model_name("reward", keys["constitution"], keys["blend"])
        version = log_and_register(
            mlflow.client,
            run.run_id,
            outcome.model_dir,
            name,
            tags={"partition": str(context.partition_key), "blend.hash": blend.content_hash},
        )
    ckpts.clear()  # as in dpo_policy: the final model is registered and about to be stored
    context.add_output_metadata(
        {
            "trained": True,
            "n_train": outcome.card["n_train"],
            "reused_training": outcome.card["reused_training"],
            "resumed_from_step": outcome.resumed_from_step if outcome.resumed_from_step is not None else -1,
            **{
                k: MetadataValue.float(float(v))
                for k, v in metrics.items()
                if k.endswith("accuracy") and v == v
            },
            "metrics": MetadataValue.json(metrics),
            "registered_model": f"models:/{name}/{version.version}",
            "chosen_vs_rejected": MetadataValue.md(png_markdown(png, "chosen vs rejected rewards")),
            **run.metadata(),
        }
    )
    return ModelDir(outcome.model_dir)
