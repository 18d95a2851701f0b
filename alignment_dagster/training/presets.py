"""Training presets, declared once: `cpu` (the demo: minutes on 2 cores) and `gpu` (one accelerator: bf16,
gradient checkpointing, larger batches, whole epochs). A run's own settings go on top of its preset.

Also the trainer arguments the reward and DPO trainers share, built from either config in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from alignment_dagster.training.dpo import DPOTrainingConfig
from alignment_dagster.training.reward import RewardTrainingConfig
from alignment_dagster.training.sft import SFTTrainingConfig

Preset = Literal["cpu", "gpu"]

# cpu save_steps 25: a MiniLM checkpoint with its optimizer state is ~260 MiB and ~2 s to write, against
# ~0.4 s a step, so every 5 steps would double the demo's 30-step training.
REWARD_PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {"max_steps": 30, "batch_size": 8, "max_length": 128, "save_steps": 25},
    "gpu": {
        "max_steps": -1,
        "batch_size": 32,
        "max_length": 512,
        "save_steps": 50,
        "bf16": True,
        "gradient_checkpointing": True,
    },
}
DPO_PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "max_steps": 10,
        "batch_size": 2,
        "max_length": 256,
        "learning_rate": 2e-4,
        "save_steps": 5,
        "logging_steps": 1,
    },
    "gpu": {
        "batch_size": 16,
        "gradient_accumulation_steps": 2,
        "bf16": True,
        "gradient_checkpointing": True,
        "max_length": 1024,
        "lora_r": 64,
        "lora_alpha": 128,
        "learning_rate": 2e-5,
        "save_steps": 50,
    },
}


# SFT on accepted revisions: LoRA on SmolLM2 like DPO's cpu preset (few steps, a higher learning rate).
SFT_PRESETS: dict[str, dict[str, Any]] = {
    "cpu": dict(DPO_PRESETS["cpu"]),
    "gpu": {
        "batch_size": 16,
        "bf16": True,
        "gradient_checkpointing": True,
        "max_length": 1024,
        "lora_r": 64,
        "lora_alpha": 128,
        "learning_rate": 1e-4,
        "save_steps": 50,
    },
}


def _set(overrides: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in overrides.items() if v is not None}


def reward_config(preset: Preset = "cpu", **overrides: Any) -> RewardTrainingConfig:
    """The preset's reward-model settings with every override that is not None on top."""
    return RewardTrainingConfig(**{**REWARD_PRESETS[preset], **_set(overrides)})


def dpo_config(preset: Preset = "cpu", **overrides: Any) -> DPOTrainingConfig:
    """The preset's DPO settings with every override that is not None on top."""
    return DPOTrainingConfig(**{**DPO_PRESETS[preset], **_set(overrides)})


def sft_config(preset: Preset = "cpu", **overrides: Any) -> SFTTrainingConfig:
    """The preset's SFT settings with every override that is not None on top."""
    return SFTTrainingConfig(**{**SFT_PRESETS[preset], **_set(overrides)})


def trainer_args(
    config: RewardTrainingConfig | DPOTrainingConfig | SFTTrainingConfig, output_dir: Path
) -> dict[str, Any]:
    """TrainingArguments the TRL trainers take alike: batches, steps, checkpoints every `save_steps` (for
    resume; the two newest kept), precision, no reporting integrations (MLflow is logged by the assets)."""
    import torch

    return {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": config.batch_size,
        "num_train_epochs": config.epochs,
        "max_steps": config.max_steps,
        "learning_rate": config.learning_rate,
        "logging_steps": config.logging_steps,
        "save_strategy": "steps",
        "save_steps": config.save_steps,
        "save_total_limit": 2,
        "report_to": [],
        "seed": config.seed,
        "bf16": config.bf16,
        "gradient_checkpointing": config.gradient_checkpointing,
        "use_cpu": not torch.cuda.is_available(),
    }


def causal_lm_for_training(model_path: str, config: DPOTrainingConfig | SFTTrainingConfig):
    """(tokenizer, model, LoRA config or None) for a policy trainer: the pad token falls back to EOS, the
    precision and LoRA settings come from `config` (LoRA on every linear layer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=torch.bfloat16 if config.bf16 else torch.float32
    )
    if not config.lora:
        return tok, model, None
    from peft import LoraConfig

    lora = LoraConfig(
        task_type="CAUSAL_LM",
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules="all-linear",
    )
    return tok, model, lora
