"""The reward-model and policy stages as plain functions: data in, a model folder with its card out.

The Dagster assets (`assets/training.py`) call these and only add storage, MLflow and metadata.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from alignment_dagster.core.keys import canonical_json, sha256_hex
from alignment_dagster.training.artifacts import write_model_card
from alignment_dagster.training.dpo import DPOTrainingConfig, drop_long_prompts, train_dpo
from alignment_dagster.training.policy_eval import PreferenceEval, implicit_reward_eval
from alignment_dagster.training.reward import RewardScorer, RewardTrainingConfig, train_reward_model

HUMAN_SOURCES = ("human", "both")
BAD_ROWS_LOGGED = 5
TRAINING_LOG = "training_log.json"  # log history and trainer metrics, kept with the weights for reuse

logger = logging.getLogger(__name__)


def _save_log(model_dir: Path, log_history: list, train_metrics: dict, seconds: float) -> None:
    (model_dir / TRAINING_LOG).write_text(
        json.dumps(
            {"log_history": log_history, "train_metrics": train_metrics, "seconds": seconds}, default=str
        )
    )


def _load_log(model_dir: Path) -> tuple[list, dict, float]:
    log = json.loads((model_dir / TRAINING_LOG).read_text())
    return log["log_history"], log["train_metrics"], log["seconds"]


def split_rows(dataset: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    if not len(dataset):
        return dataset, dataset

    def part(name: str) -> pd.DataFrame:
        return dataset[dataset["split"] == name].reset_index(drop=True)

    return part("train"), part("eval")


def too_small(
    train: pd.DataFrame, min_train_rows: int, dropped_long: int = 0, max_length: int = 0
) -> str | None:
    """The skip reason when the blend left too little to train on, else None."""
    if len(train) >= min_train_rows:
        return None
    if dropped_long:
        return (
            f"{len(train)} training rows (< min_train_rows={min_train_rows}) after leaving out {dropped_long} "
            f"whose prompt alone is {max_length}+ tokens: raise max_length, or label more pairs"
        )
    return (
        f"{len(train)} training rows (< min_train_rows={min_train_rows}): this blend has too few labels; "
        "label more pairs or lower min_train_rows"
    )


def skipped_card(work_dir: Path, asset: str, reason: str, **card: Any) -> tuple[Path, dict[str, Any]]:
    """A model folder holding only the card: the partition materializes, loaders raise ModelNotTrained."""
    model_dir = work_dir / "model"
    card = {"asset": asset, "trained": False, "skip_reason": reason, **card}
    write_model_card(model_dir, card)
    return model_dir, card


def heldout_hh_pairs(
    sources: Iterable[str],
    read_bytes: Callable[[str], bytes],
    exclude_prompt_ids: Iterable[str],
    limit: int | None,
    log: logging.Logger = logger,
) -> pd.DataFrame:
    """Human-labelled HH-RLHF pairs as chosen/rejected rows, leaving out every prompt seen in training
    (by prompt_id, the same id the imported pairs carry in the pipeline). Bad rows are skipped with a
    warning on `log` (an asset passes `context.log`)."""
    from alignment_dagster.data.blending import blend_preferences
    from alignment_dagster.data.pairs import import_pairs
    from alignment_dagster.specs.blend import Blend

    ps = import_pairs(list(sources), read_bytes)
    if ps.bad_rows:
        log.warning(
            f"{len(ps.bad_rows)} bad held-out pair rows skipped; first: "
            + "; ".join(map(str, ps.bad_rows[:BAD_ROWS_LOGGED]))
        )
    if ps.pairs.empty or ps.labels.empty:
        return pd.DataFrame(columns=["pair_id", "prompt_id", "prompt", "chosen", "rejected"])
    excluded = set(exclude_prompt_ids)
    pairs = ps.pairs[~ps.pairs["prompt_id"].isin(excluded)]
    human = ps.labels.rename(columns={"label": "choice"})
    rows = blend_preferences(
        pairs, None, human, Blend(name="hh-heldout", ai_weight=0, eval_fraction=0.0)
    ).dataset
    return rows.head(limit).reset_index(drop=True) if limit else rows


@dataclass
class RewardOutcome:
    model_dir: Path
    card: dict[str, Any]
    scores: dict[str, tuple[list[float], list[float]]] = field(
        default_factory=dict
    )  # set -> (chosen, rejected)
    log_history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from_step: int | None = None


def fit_reward_model(
    dataset: pd.DataFrame,
    config: RewardTrainingConfig,
    work_dir: Path,
    *,
    heldout: pd.DataFrame | None = None,
    min_train_rows: int = 4,
    checkpoints=None,
    model_cache=None,
    fingerprint: str | None = None,
    callbacks: list | None = None,
    card: dict[str, Any] | None = None,
) -> RewardOutcome:
    """Train on the train split, resuming from `checkpoints` (a `StorageCheckpoints`) when it holds one, or
    reuse identical training (`fingerprint`) from `model_cache` (a `StorageModelCache`); accuracy on the
    eval split, its human-labelled rows, and held-out pairs."""
    card = dict(card or {})
    train, evals = split_rows(dataset)
    common = {
        "backbone": config.backbone_path(),
        "lora": config.lora,
        "config": asdict(config),
        "train_prompt_ids": sorted(set(train.get("prompt_id", []))),
        "n_train": len(train),
        **card,
    }
    if reason := too_small(train, min_train_rows):
        return RewardOutcome(*skipped_card(work_dir, "reward_model", reason, **common))
    model_dir = work_dir / "model"
    fingerprint = fingerprint or reward_fingerprint(train, config)
    resumed, steps = None, 0
    reused = model_cache is not None and model_cache.get(fingerprint, model_dir)
    if reused:
        log_history, train_metrics, seconds = _load_log(model_dir)
    else:
        callbacks = list(callbacks or [])
        if checkpoints is not None:
            resumed = checkpoints.restore_latest(model_dir / "checkpoints")  # where train_reward_model looks
            callbacks.append(checkpoints.callback())
        counter = _StepCounter.make()
        t0 = time.perf_counter()
        result = train_reward_model(train, config, model_dir, callbacks=[*callbacks, counter])
        seconds, steps = time.perf_counter() - t0, counter.steps
        log_history, train_metrics = result.log_history, dict(result.train_metrics)
        _save_log(model_dir, log_history, train_metrics, seconds)
        if model_cache is not None:
            model_cache.put(fingerprint, model_dir)
    common.update(fingerprint=fingerprint, reused_training=bool(reused), resumed_from_step=resumed)
    scorer = RewardScorer(model_dir)
    sets = {"eval": evals, "eval_human": evals[evals["source"].isin(HUMAN_SOURCES)] if len(evals) else evals}
    if heldout is not None:
        sets["hh_heldout"] = heldout
    metrics: dict[str, float] = {
        "train_seconds": seconds,
        "steps_this_run": steps,
        **{f"train.{k}": v for k, v in train_metrics.items()},
    }
    scores = {}
    for name, df in sets.items():
        acc, chosen, rejected = scorer.accuracy(df)
        metrics[f"{name}.n"] = len(df)
        metrics[f"{name}.accuracy"] = acc
        scores[name] = (chosen, rejected)
    write_model_card(model_dir, {"asset": "reward_model", "trained": True, "metrics": metrics, **common})
    card = json.loads((model_dir / "alignment.json").read_text())
    return RewardOutcome(model_dir, card, scores, log_history, resumed)


def _row_digests(train: pd.DataFrame) -> list[str]:
    # The pair and which reply is chosen: two blends can label the same pair_id in opposite directions.
    return [
        sha256_hex(canonical_json([list(r.prompt), list(r.chosen), list(r.rejected)]))[:16]
        for r in train.itertuples(index=False)
    ]


def training_fingerprint(train: pd.DataFrame, config: DPOTrainingConfig, base_identity: str) -> str:
    """What determines a policy training run: its rows (content, chosen side, the weights as training uses
    them, i.e. normalised), every config knob but the bookkeeping ones, and the base weights. Checkpoints
    and the trained-model cache are keyed by it, so only an identical run resumes or reuses them."""
    from alignment_dagster.training.dpo import WEIGHT_COLUMN, normalised_weights

    cfg = {k: v for k, v in asdict(config).items() if k not in ("logging_steps", "save_steps")}
    rows: list = []
    if len(train):
        weights = (
            normalised_weights(train[WEIGHT_COLUMN])
            if config.weighted and WEIGHT_COLUMN in train
            else [1.0] * len(train)
        )
        rows = [[d, round(w, 9)] for d, w in zip(_row_digests(train), weights, strict=False)]
    return sha256_hex(canonical_json({"rows": rows, "config": cfg, "base": base_identity}))[:16]


def reward_fingerprint(train: pd.DataFrame, config: RewardTrainingConfig) -> str:
    """The same for a reward model: rows (content, chosen side, margin), config, backbone weights."""
    from alignment_dagster.backends.identity import content_hash

    backbone = Path(config.backbone_path())
    margins = (
        train["margin"].astype(float).fillna(0.0).tolist()
        if config.use_margin and "margin" in train
        else [0.0] * len(train)
    )
    rows = (
        [[d, round(m, 9)] for d, m in zip(_row_digests(train), margins, strict=False)] if len(train) else []
    )
    cfg = {k: v for k, v in asdict(config).items() if k not in ("logging_steps", "save_steps")}
    base = content_hash(backbone) if backbone.is_dir() else str(backbone)
    return sha256_hex(canonical_json({"rows": rows, "config": cfg, "backbone": base}))[:16]


@dataclass
class PolicyOutcome:
    model_dir: Path
    card: dict[str, Any]
    log_history: list[dict[str, Any]] = field(default_factory=list)
    evaluation: PreferenceEval | None = None
    resumed_from_step: int | None = None


def fit_policy(
    dataset: pd.DataFrame,
    config: DPOTrainingConfig,
    base_model: str | None,
    work_dir: Path,
    *,
    checkpoints=None,
    model_cache=None,
    fingerprint: str | None = None,
    callbacks: list | None = None,
    min_train_rows: int = 4,
    eval_limit: int | None = 32,
    card: dict[str, Any] | None = None,
) -> PolicyOutcome:
    """DPO on the train split, resuming from `checkpoints` (a `StorageCheckpoints`) when it holds one, or
    reusing identical training (`fingerprint`) from `model_cache` (a `StorageModelCache`); implicit-reward
    accuracy on the eval split against the base."""
    from alignment_dagster.backends.identity import model_identity

    card = dict(card or {})
    train, evals = split_rows(dataset)
    base_path, base_identity = model_identity("transformers", base_model)
    train, dropped_long = drop_long_prompts(train, base_path, config)
    common = {
        "base_model": base_model,
        "base_model_path": base_path,
        "lora": config.lora,
        "config": asdict(config),
        "train_prompt_ids": sorted(set(train.get("prompt_id", []))),
        "n_train": len(train),
        "dropped_long_prompts": dropped_long,
        **card,
    }
    if reason := too_small(train, min_train_rows, dropped_long, config.max_length):
        return PolicyOutcome(*skipped_card(work_dir, "dpo_policy", reason, **common))
    fingerprint = fingerprint or training_fingerprint(train, config, base_identity)
    model_dir = work_dir / "model"
    resumed, steps = None, 0
    reused = model_cache is not None and model_cache.get(fingerprint, model_dir)
    if reused:
        log_history, train_metrics, seconds = _load_log(model_dir)
    else:
        callbacks = list(callbacks or [])
        if checkpoints is not None:
            resumed = checkpoints.restore_latest(work_dir / "checkpoints")
            callbacks.append(checkpoints.callback())
        counter = _StepCounter.make()
        t0 = time.perf_counter()
        result = train_dpo(train, base_path, config, work_dir, callbacks=[*callbacks, counter])
        seconds, steps = time.perf_counter() - t0, counter.steps
        log_history, train_metrics = result.log_history, dict(result.train_metrics)
        _save_log(model_dir, log_history, train_metrics, seconds)
        if model_cache is not None:
            model_cache.put(fingerprint, model_dir)
    evaluation = evaluate_policy(
        model_dir, base_path, config, evals.head(eval_limit) if eval_limit else evals
    )
    metrics = {
        "train_seconds": seconds,
        "steps_this_run": steps,
        **{f"train.{k}": v for k, v in train_metrics.items()},
        **evaluation.metrics("eval."),
    }
    write_model_card(
        model_dir,
        {
            "asset": "dpo_policy",
            "trained": True,
            "metrics": metrics,
            "resumed_from_step": resumed,
            "fingerprint": fingerprint,
            "reused_training": bool(reused),
            **common,
        },
    )
    return PolicyOutcome(
        model_dir, json.loads((model_dir / "alignment.json").read_text()), log_history, evaluation, resumed
    )


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


def evaluate_policy(
    model_dir: Path, base_path: str, config: DPOTrainingConfig, rows: pd.DataFrame
) -> PreferenceEval:
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
        return implicit_reward_eval(
            policy, tok, rows, config.beta, config.max_length, truncation_mode=config.truncation_mode
        )
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    return implicit_reward_eval(
        policy,
        tok,
        rows,
        config.beta,
        config.max_length,
        reference=base.eval(),
        truncation_mode=config.truncation_mode,
    )
