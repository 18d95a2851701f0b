"""Supervised fine-tuning on accepted revisions (Constitutional AI phase 1) with TRL's SFTTrainer, LoRA by
default, through the same skeleton as the reward model and DPO (`stages.train_or_reuse`: too few rows -> a
card-only folder; identical training before -> its weights reused; checkpoints for resume).

Rows are conversational `messages` (user, then the accepted revision); training sees them as prompt and
completion, so the loss is on the revision only. The folder holds the LoRA adapter (or a full model) and the
`alignment.json` card with `train_prompt_ids`, like every model folder the pipeline stores. `merged_policy`
turns it into a plain model folder, the base DPO starts from in the two-phase flow.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from alignment_dagster.core.keys import canonical_json, sha256_hex
from alignment_dagster.core.reporting import StageReport
from alignment_dagster.training.artifacts import write_model_card
from alignment_dagster.training.checkpoints import last_checkpoint
from alignment_dagster.training.stages import (
    ModelOutcome,
    PolicyOutcome,
    card_basics,
    fit_policy,
    skipped_card,
    too_small,
    train_or_reuse,
)

BOOKKEEPING = ("logging_steps", "save_steps")


@dataclass
class SFTTrainingConfig:
    """Every knob of SFT in one place; defaults are the CPU preset's neighbours (`training.presets`)."""

    epochs: float = 1.0
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-4
    max_length: int = 512
    max_steps: int = -1
    lora: bool = True  # False: full fine-tune
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    bf16: bool = False
    gradient_checkpointing: bool = False
    seed: int = 0
    logging_steps: int = 5
    save_steps: int = 50


@dataclass
class SFTTrainingResult:
    output_dir: Path
    train_metrics: dict[str, float]
    log_history: list[dict[str, Any]] = field(default_factory=list)


def sft_examples(dataset: pd.DataFrame) -> list[dict[str, Any]]:
    """Conversational prompt/completion examples from `messages` rows (the last message is the completion)."""
    examples = []
    for messages in dataset["messages"]:
        turns = [{"role": m["role"], "content": m["content"]} for m in messages]
        if len(turns) < 2 or turns[-1]["role"] != "assistant":
            raise ValueError(
                f"an SFT row must end with an assistant message, got {[t['role'] for t in turns]}"
            )
        examples.append({"prompt": turns[:-1], "completion": turns[-1:]})
    return examples


def sft_row_digests(dataset: pd.DataFrame) -> list[str]:
    """One digest per row (its messages): the retrain policy's and the fingerprint's view of the rows."""
    return [
        sha256_hex(canonical_json([[m["role"], m["content"]] for m in messages]))[:16]
        for messages in dataset["messages"]
    ]


def sft_fingerprint(train: pd.DataFrame, config: SFTTrainingConfig, base_identity: str) -> str:
    knobs = {k: v for k, v in asdict(config).items() if k not in BOOKKEEPING}
    rows = sft_row_digests(train) if len(train) else []
    return sha256_hex(canonical_json({"rows": rows, "config": knobs, "base": base_identity, "kind": "sft"}))[
        :16
    ]


def build_sft_trainer(
    train: pd.DataFrame, model_path: str, config: SFTTrainingConfig, output_dir: Path, callbacks=None
):
    """The configured SFTTrainer, ready to `train()`."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from alignment_dagster.training.presets import causal_lm_for_training, trainer_args

    tok, model, peft_config = causal_lm_for_training(model_path, config)
    args = SFTConfig(
        **trainer_args(config, output_dir / "checkpoints"),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_length=config.max_length,
        completion_only_loss=True,
        packing=False,
    )
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(sft_examples(train)),
        processing_class=tok,
        peft_config=peft_config,
        callbacks=callbacks,
    )


def train_sft(
    train: pd.DataFrame, model_path: str, config: SFTTrainingConfig, output_dir: Path, callbacks=None
):
    """Train on `messages` rows; resume from the last local checkpoint; save the adapter (LoRA) or the full
    model as safetensors into `output_dir/model`."""
    trainer = build_sft_trainer(train, model_path, config, output_dir, callbacks)
    out = trainer.train(resume_from_checkpoint=last_checkpoint(output_dir / "checkpoints"))
    final_dir = output_dir / "model"
    trainer.model.save_pretrained(final_dir, safe_serialization=True)
    trainer.processing_class.save_pretrained(final_dir)
    (final_dir / "sft_config.json").write_text(
        json.dumps({**asdict(config), "base_model": model_path}, indent=1)
    )
    return SFTTrainingResult(final_dir, dict(out.metrics), list(trainer.state.log_history))


@dataclass
class SFTOutcome(ModelOutcome):
    def report(self, title: str) -> StageReport:
        report = self._report()
        report.add(lora=self.card["lora"])
        if self.trained:
            losses = [(int(e["step"]), float(e["loss"])) for e in self.training.log_history if "loss" in e]
            report.curves["train_loss"] = losses
            report.add(final_train_loss=losses[-1][1] if losses else float("nan"))
        return report


def fit_sft_policy(
    dataset: pd.DataFrame,
    config: SFTTrainingConfig,
    base_model: str | None,
    work_dir: Path,
    *,
    checkpoints=None,
    model_cache=None,
    fingerprint: str | None = None,
    callbacks: list | None = None,
    min_train_rows: int = 4,
    card: dict[str, Any] | None = None,
) -> SFTOutcome:
    """SFT on every row (the revisions come from train-split prompts only; evals use eval-split prompts)."""
    from alignment_dagster.backends.identity import model_identity

    base_path, base_identity = model_identity("transformers", base_model)
    digests = sft_row_digests(dataset) if len(dataset) else []
    common = card_basics(dataset, config, card, digests, base_model=base_model, base_model_path=base_path)
    if reason := too_small(dataset, min_train_rows):
        return SFTOutcome(*skipped_card(work_dir, "sft_policy", reason, **common))
    fingerprint = fingerprint or sft_fingerprint(dataset, config, base_identity)
    model_dir = work_dir / "model"
    training = train_or_reuse(
        model_dir,
        work_dir / "checkpoints",
        fingerprint,
        lambda cbs: train_sft(dataset, base_path, config, work_dir, callbacks=cbs),
        checkpoints=checkpoints,
        model_cache=model_cache,
        callbacks=callbacks,
    )
    card = write_model_card(
        model_dir,
        {
            "asset": "sft_policy",
            "trained": True,
            "metrics": training.metrics(),
            "resumed_from_step": training.resumed_from_step,
            "fingerprint": fingerprint,
            "reused_training": training.reused,
            **common,
        },
    )
    return SFTOutcome(model_dir, card, training)


def merged_policy(policy_dir: Path, base_path: str, dest: Path) -> Path:
    """A plain model folder: the base with the policy's LoRA adapter merged in (a full fine-tune is copied as
    it is); what DPO loads as its starting model and reference in the two-phase flow."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignment_dagster.backends.adapter import adapter_kind

    if adapter_kind(policy_dir) == "full":
        shutil.copytree(policy_dir, dest, ignore=shutil.ignore_patterns("alignment.json", "_MANIFEST.json"))
        return dest
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(policy_dir)).merge_and_unload()
    merged.save_pretrained(dest, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_path).save_pretrained(dest)
    return dest


@dataclass
class PolicyStart:
    """What DPO starts from: the base model, or the constitution version's sft_policy merged into it (the
    two-phase flow). `identity` goes into the training fingerprint and the card, so a retrained SFT model
    retrains the DPO policies on top of it."""

    base_model: str | None  # the base both start from (None: the embedded SmolLM2)
    identity: str
    sft_dir: Path | None = None
    skip_reason: str | None = None  # DPO cannot start: the sft_policy is missing or was not trained
    card: dict[str, Any] = field(default_factory=dict)

    def model_path(self, work_dir: Path) -> str | None:
        """The model folder DPO loads: the base, or the SFT adapter merged into it (written once)."""
        if self.sft_dir is None:
            return self.base_model
        from alignment_dagster.backends.identity import model_identity

        dest = work_dir / "sft-merged"
        if not (dest / "config.json").is_file():
            merged_policy(self.sft_dir, model_identity("transformers", self.base_model)[0], dest)
        return str(dest)

    def finish(self, model_dir: Path) -> None:
        """Put the SFT adapter beside a trained LoRA DPO adapter (`start/`), so the folder loads alone."""
        import shutil

        from alignment_dagster.backends.adapter import START, adapter_kind

        if self.sft_dir is None or adapter_kind(model_dir) == "full" or (model_dir / START).exists():
            return
        if adapter_kind(self.sft_dir) == "lora":
            keep = ("adapter_config.json", "adapter_model.safetensors")
            shutil.copytree(
                self.sft_dir, model_dir / START, ignore=lambda _, names: [n for n in names if n not in keep]
            )


def policy_start(start_from: str, base_model: str | None, sft_dir: Path | None) -> PolicyStart:
    """Where a blend's DPO starts (`Blend.start_from`); `sft_dir`: the stored sft_policy, if any."""
    from alignment_dagster.backends.adapter import adapter_identity
    from alignment_dagster.backends.identity import model_identity
    from alignment_dagster.training.artifacts import is_trained, read_model_card

    base_identity = model_identity("transformers", base_model)[1]
    if start_from != "sft":
        return PolicyStart(base_model, base_identity)
    if sft_dir is None or not is_trained(sft_dir):
        why = read_model_card(sft_dir).get("skip_reason") if sft_dir is not None else "not materialized"
        reason = (
            f"the blend starts DPO from sft_policy, which is not trained for this constitution version: {why}"
        )
        return PolicyStart(base_model, base_identity, skip_reason=reason)
    sft = read_model_card(sft_dir)
    card = {"start_from": "sft", "sft_policy": sft.get("registered_model") or sft.get("fingerprint")}
    return PolicyStart(base_model, adapter_identity(base_identity, str(sft_dir)), sft_dir, card=card)


def fit_policy_from(
    start: PolicyStart, dataset: pd.DataFrame, config, work_dir: Path, **kwargs: Any
) -> PolicyOutcome:
    """`stages.fit_policy` from where the blend says DPO starts: the base, or sft_policy merged into it (its
    adapter then kept in the folder's `start/`); a card-only folder when that sft_policy is not trained."""
    card = kwargs.pop("card", None) or {}
    if start.skip_reason:
        return PolicyOutcome(*skipped_card(work_dir, "dpo_policy", start.skip_reason, **card))
    card = {**card, "base_model": start.base_model}  # the base the folder loads on; not the merged copy
    outcome = fit_policy(dataset, config, start.model_path(work_dir), work_dir, card=card, **kwargs)
    if outcome.trained:
        start.finish(outcome.model_dir)
    return outcome
