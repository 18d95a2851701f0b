"""The reward-model and policy stages as plain functions: data in, a model folder with its card out.

The Dagster assets (`assets/training.py`) call these and only add storage, MLflow and metadata.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from alignment_dagster.keys import canonical_json, sha256_hex
from alignment_dagster.training.artifacts import write_model_card
from alignment_dagster.training.dpo import DPOTrainingConfig, train_dpo
from alignment_dagster.training.policy_eval import PreferenceEval, implicit_reward_eval
from alignment_dagster.training.reward import RewardScorer, RewardTrainingConfig, train_reward_model

HUMAN_SOURCES = ("human", "both")


def split_rows(dataset: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    if not len(dataset):
        return dataset, dataset
    def part(name: str) -> pd.DataFrame:
        return dataset[dataset["split"] == name].reset_index(drop=True)

    return part("train"), part("eval")


def too_small(train: pd.DataFrame, min_train_rows: int) -> str | None:
    """The skip reason when the blend left too little to train on, else None."""
    if len(train) < min_train_rows:
        return (f"{len(train)} training rows (< min_train_rows={min_train_rows}): this blend has too few labels; "
                "label more pairs or lower min_train_rows")
    return None


def skipped_card(work_dir: Path, asset: str, reason: str, **card: Any) -> tuple[Path, dict[str, Any]]:
    """A model folder holding only the card: the partition materializes, loaders raise ModelNotTrained."""
    model_dir = work_dir / "model"
    card = {"asset": asset, "trained": False, "skip_reason": reason, **card}
    write_model_card(model_dir, card)
    return model_dir, card


def heldout_hh_pairs(sources: Iterable[str], read_bytes: Callable[[str], bytes], exclude_prompt_ids: Iterable[str],
                     limit: int | None) -> pd.DataFrame:
    """Human-labelled HH-RLHF pairs as chosen/rejected rows, leaving out every prompt seen in training
    (by prompt_id, the same id the imported pairs carry in the pipeline)."""
    from alignment_dagster.blend import Blend, blend_preferences
    from alignment_dagster.pairs import import_pairs

    ps = import_pairs(list(sources), read_bytes)
    if ps.pairs.empty or ps.labels.empty:
        return pd.DataFrame(columns=["pair_id", "prompt_id", "prompt", "chosen", "rejected"])
    excluded = set(exclude_prompt_ids)
    pairs = ps.pairs[~ps.pairs["prompt_id"].isin(excluded)]
    human = ps.labels.rename(columns={"label": "choice"})
    rows = blend_preferences(pairs, None, human, Blend(name="hh-heldout", ai_weight=0, eval_fraction=0.0)).dataset
    return rows.head(limit).reset_index(drop=True) if limit else rows


@dataclass
class RewardOutcome:
    model_dir: Path
    card: dict[str, Any]
    scores: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)  # set -> (chosen, rejected)
    log_history: list[dict[str, Any]] = field(default_factory=list)


def fit_reward_model(dataset: pd.DataFrame, config: RewardTrainingConfig, work_dir: Path, *,
                     heldout: pd.DataFrame | None = None, min_train_rows: int = 4,
                     card: dict[str, Any] | None = None) -> RewardOutcome:
    """Train on the train split; accuracy on the eval split, its human-labelled rows, and held-out pairs."""
    card = dict(card or {})
    train, evals = split_rows(dataset)
    common = {"backbone": config.backbone_path(), "lora": config.lora, "config": asdict(config),
              "train_prompt_ids": sorted(set(train.get("prompt_id", []))), "n_train": len(train), **card}
    if reason := too_small(train, min_train_rows):
        return RewardOutcome(*skipped_card(work_dir, "reward_model", reason, **common))
    model_dir = work_dir / "model"
    t0 = time.perf_counter()
    result = train_reward_model(train, config, model_dir)
    shutil.rmtree(model_dir / "checkpoints", ignore_errors=True)  # the trainer's scratch folder
    seconds = time.perf_counter() - t0
    scorer = RewardScorer(model_dir)
    sets = {"eval": evals, "eval_human": evals[evals["source"].isin(HUMAN_SOURCES)] if len(evals) else evals}
    if heldout is not None:
        sets["hh_heldout"] = heldout
    metrics: dict[str, float] = {"train_seconds": seconds, **{f"train.{k}": v for k, v in result.train_metrics.items()}}
    scores = {}
    for name, df in sets.items():
        acc, chosen, rejected = scorer.accuracy(df)
        metrics[f"{name}.n"] = len(df)
        metrics[f"{name}.accuracy"] = acc
        scores[name] = (chosen, rejected)
    write_model_card(model_dir, {"asset": "reward_model", "trained": True, "metrics": metrics, **common})
    return RewardOutcome(model_dir, json.loads((model_dir / "alignment.json").read_text()), scores,
                         result.log_history)


def training_fingerprint(train: pd.DataFrame, config: DPOTrainingConfig, base_identity: str) -> str:
    """What determines a training run: its rows (ids, weights), every config knob but the bookkeeping
    ones, and the base weights. Checkpoints live under it, so only an identical run resumes them."""
    cfg = {k: v for k, v in asdict(config).items() if k not in ("logging_steps", "save_steps")}
    rows = [[r.pair_id, float(r.weight)] for r in train.itertuples(index=False)] if len(train) else []
    return sha256_hex(canonical_json({"rows": rows, "config": cfg, "base": base_identity}))[:16]


@dataclass
class PolicyOutcome:
    model_dir: Path
    card: dict[str, Any]
    log_history: list[dict[str, Any]] = field(default_factory=list)
    evaluation: PreferenceEval | None = None
    resumed_from_step: int | None = None


def fit_policy(dataset: pd.DataFrame, config: DPOTrainingConfig, base_model: str | None, work_dir: Path, *,
               checkpoints=None, callbacks: list | None = None, min_train_rows: int = 4, eval_limit: int | None = 32,
               card: dict[str, Any] | None = None) -> PolicyOutcome:
    """DPO on the train split (resuming from `checkpoints`, a `StorageCheckpoints`, when it holds one);
    implicit-reward accuracy on the eval split against the base."""
    from alignment_dagster.backends.identity import model_identity

    card = dict(card or {})
    train, evals = split_rows(dataset)
    base_path = model_identity("transformers", base_model)[0]
    common = {"base_model": base_model, "base_model_path": base_path, "lora": config.lora, "config": asdict(config),
              "train_prompt_ids": sorted(set(train.get("prompt_id", []))), "n_train": len(train), **card}
    if reason := too_small(train, min_train_rows):
        return PolicyOutcome(*skipped_card(work_dir, "dpo_policy", reason, **common))
    resumed = None
    callbacks = list(callbacks or [])
    if checkpoints is not None:
        resumed = checkpoints.restore_latest(work_dir / "checkpoints")
        callbacks.append(checkpoints.callback())
    counter = _StepCounter.make()
    t0 = time.perf_counter()
    result = train_dpo(train, base_path, config, work_dir, callbacks=[*callbacks, counter])
    seconds = time.perf_counter() - t0
    evaluation = evaluate_policy(result.output_dir, base_path, config, evals.head(eval_limit) if eval_limit else evals)
    metrics = {"train_seconds": seconds, "steps_this_run": counter.steps,
               **{f"train.{k}": v for k, v in result.train_metrics.items()},
               **evaluation.metrics("eval.")}
    write_model_card(result.output_dir, {"asset": "dpo_policy", "trained": True, "metrics": metrics,
                                         "resumed_from_step": resumed, **common})
    return PolicyOutcome(result.output_dir, json.loads((result.output_dir / "alignment.json").read_text()),
                         result.log_history, evaluation, resumed)


class _StepCounter:
    """Optimizer steps taken in this process (a resumed run takes only the unfinished ones)."""

    @staticmethod
    def make():
        from transformers import TrainerCallback

        class Counter(TrainerCallback):
            steps = 0

            def on_step_end(self, args, state, control, **kwargs):
                self.steps += 1

        return Counter()


def evaluate_policy(model_dir: Path, base_path: str, config: DPOTrainingConfig, rows: pd.DataFrame) -> PreferenceEval:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    dtype = torch.bfloat16 if config.bf16 else torch.float32
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype).to(device)
    if config.lora:
        from peft import PeftModel

        policy = PeftModel.from_pretrained(base, str(model_dir)).to(device)
        return implicit_reward_eval(policy, tok, rows, config.beta, config.max_length)
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    return implicit_reward_eval(policy, tok, rows, config.beta, config.max_length, reference=base.eval())
