"""Policy training with TRL's DPOTrainer (LoRA via PEFT by default), with per-pair loss weights.

TRL's DPOTrainer has no per-example weights (an open upstream request). `WeightedDPOTrainer` adds them
for the standard sigmoid DPO loss: each pair's loss is multiplied by its blend weight (judge confidence x
source weight), weights normalised to mean 1 over the dataset so the learning rate keeps its meaning.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from alignment_dagster.training.checkpoints import last_checkpoint

WEIGHT_COLUMN = "weight"


@dataclass
class DPOTrainingConfig:
    """Every knob of policy training in one place. Defaults are the CPU demo preset (SmolLM2-135M)."""

    beta: float = 0.1
    loss_type: str = "sigmoid"
    epochs: float = 1.0
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-5
    max_length: int = 384
    # keep_end: a sequence longer than max_length loses the conversation's oldest tokens, never the reply.
    # keep_start (TRL's default) cuts the reply instead, and TRL drops every row whose prompt alone fills
    # max_length: at the CPU preset's 256 tokens, about one HH-RLHF pair in ten.
    truncation_mode: str = "keep_end"
    max_steps: int = -1
    lora: bool = True  # False: full fine-tune
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    weighted: bool = True  # weight each pair's loss by its `weight` column
    bf16: bool = False
    gradient_checkpointing: bool = False
    seed: int = 0
    logging_steps: int = 5
    save_steps: int = 50  # checkpoints for resume


@dataclass
class DPOTrainingResult:
    output_dir: Path
    train_metrics: dict[str, float]
    log_history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: str | None = None


def normalised_weights(weights: pd.Series) -> list[float]:
    """Scale weights to mean 1 (all-equal weights become all 1.0, i.e. plain DPO)."""
    w = weights.astype(float).fillna(0.0).clip(lower=0.0)
    mean = float(w.mean()) if len(w) else 0.0
    if mean <= 0 or math.isnan(mean):
        raise ValueError("DPO weights must have a positive mean")
    return (w / mean).tolist()


def _make_trainer_class():
    import torch
    from trl import DPOTrainer
    from trl.trainer import dpo_trainer as dpo_module

    class _WeightedLogSigmoid:
        """Stands in for torch.nn.functional inside TRL's loss: multiplies the batch's logsigmoid by the
        pair weights. Exactly one such call per loss computation is expected and checked."""

        def __init__(self, functional: Any, weights: torch.Tensor):
            self._f = functional
            self._w = weights
            self.calls = 0

        def logsigmoid(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return self._f.logsigmoid(x) * self._w.to(x.dtype)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._f, name)

    class WeightedDPOTrainer(DPOTrainer):
        @contextmanager
        def _weighted(self, weights: torch.Tensor):
            proxy = _WeightedLogSigmoid(dpo_module.F, weights)
            original, dpo_module.F = dpo_module.F, proxy
            try:
                yield proxy
            finally:
                dpo_module.F = original

        def _compute_loss(self, model, inputs, return_outputs):
            weights = inputs.pop(WEIGHT_COLUMN, None)
            if weights is None:
                return super()._compute_loss(model, inputs, return_outputs)
            with self._weighted(weights) as proxy:
                out = super()._compute_loss(model, inputs, return_outputs)
            if proxy.calls != 1:
                raise RuntimeError(
                    f"weighted DPO expected one logsigmoid in TRL's sigmoid loss, saw {proxy.calls}: "
                    "this TRL version computes the loss differently; train with weighted=False"
                )
            return out

    return WeightedDPOTrainer


class WeightCollator:
    """TRL's preference collator plus a `weight` tensor (the dataset keeps its `weight` column)."""

    def __init__(self, inner: Any):
        self.inner = inner

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch = self.inner(examples)
        if examples and WEIGHT_COLUMN in examples[0]:
            batch[WEIGHT_COLUMN] = torch.tensor([float(e[WEIGHT_COLUMN]) for e in examples])
        return batch


def _rows(df: pd.DataFrame, weighted: bool) -> list[dict[str, Any]]:
    weights = normalised_weights(df[WEIGHT_COLUMN]) if weighted and WEIGHT_COLUMN in df else None
    rows = []
    for i, r in enumerate(df.itertuples(index=False)):
        row = {"prompt": list(r.prompt), "chosen": list(r.chosen), "rejected": list(r.rejected)}
        if weights is not None:
            row[WEIGHT_COLUMN] = weights[i]
        rows.append(row)
    return rows


def drop_long_prompts(
    train: pd.DataFrame, tokenizer_path: str, config: DPOTrainingConfig
) -> tuple[pd.DataFrame, int]:
    """With keep-start truncation: the rows whose prompt, rendered with the chat template, is shorter than
    `max_length` tokens, and how many were left out. TRL drops the others silently before training (nothing
    of their replies would be left to learn from), and a dataset it empties that way crashes its sampler.
    With keep-end truncation every row keeps its replies: all rows, none left out."""
    from transformers import AutoTokenizer

    if not len(train) or config.truncation_mode == "keep_end":
        return train, 0
    max_length = config.max_length
    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    texts = [
        tok.apply_chat_template(list(p), add_generation_prompt=True, tokenize=False) for p in train["prompt"]
    ]
    lengths = [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]
    keep = [n < max_length for n in lengths]
    return train[keep].reset_index(drop=True), len(train) - sum(keep)


def _check_rows(train: pd.DataFrame, model_path: str, config: DPOTrainingConfig) -> bool:
    """Whether rows are weighted; refuses rows that could not train (none, or every prompt too long)."""
    if len(train) == 0:
        raise ValueError("no training rows for DPO")
    if not len(drop_long_prompts(train, model_path, config)[0]):
        raise ValueError(
            f"every one of the {len(train)} DPO training rows has a prompt of {config.max_length}+ "
            "tokens (max_length): nothing would be left to train on; raise max_length"
        )
    weighted = config.weighted and WEIGHT_COLUMN in train.columns
    if weighted and config.loss_type != "sigmoid":
        raise ValueError(
            f"per-pair weights are implemented for loss_type 'sigmoid', not {config.loss_type!r}"
        )
    return weighted


def build_trainer(
    train: pd.DataFrame, model_path: str, config: DPOTrainingConfig, output_dir: Path, callbacks=None
):
    """The configured (weighted) DPO trainer, ready to `train()`; exposed for tests and notebooks."""
    from datasets import Dataset
    from trl import DPOConfig
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from alignment_dagster.training.presets import causal_lm_for_training, trainer_args

    weighted = _check_rows(train, model_path, config)
    tok, model, peft_config = causal_lm_for_training(model_path, config)
    args = DPOConfig(
        **trainer_args(config, output_dir / "checkpoints"),
        beta=config.beta,
        loss_type=[config.loss_type],
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_length=config.max_length,
        truncation_mode=config.truncation_mode,
        remove_unused_columns=False,  # keep `weight` for the collator
    )
    collator = WeightCollator(
        DataCollatorForPreference(
            pad_token_id=tok.pad_token_id,
            max_length=config.max_length,
            truncation_mode=config.truncation_mode,
        )
    )
    return _make_trainer_class()(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(_rows(train, weighted)),
        processing_class=tok,
        peft_config=peft_config,
        data_collator=collator,
        callbacks=callbacks,
    )


def train_dpo(
    train: pd.DataFrame, model_path: str, config: DPOTrainingConfig, output_dir: Path, callbacks=None
) -> DPOTrainingResult:
    """Train on conversational prompt/chosen/rejected rows (+ weight); resume from the last checkpoint in
    output_dir if a previous attempt was interrupted; save the adapter (LoRA) or full model as safetensors."""
    trainer = build_trainer(train, model_path, config, output_dir, callbacks)
    resume = last_checkpoint(output_dir / "checkpoints")
    out = trainer.train(resume_from_checkpoint=resume)
    final_dir = output_dir / "model"
    trainer.model.save_pretrained(final_dir, safe_serialization=True)
    trainer.processing_class.save_pretrained(final_dir)
    (final_dir / "dpo_config.json").write_text(
        json.dumps({**asdict(config), "base_model": model_path}, indent=1)
    )
    return DPOTrainingResult(final_dir, dict(out.metrics), list(trainer.state.log_history), resume)
