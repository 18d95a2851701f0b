"""The reward-model and policy stages as plain functions: data in, a model folder with its card out.

Both follow one skeleton (`train_or_reuse`): too few rows -> a card-only folder; identical training done
before (same fingerprint) -> its weights reused; else train, resuming from the newest checkpoint in storage.
The assets call these and add only storage, the MLflow registry and metadata.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from alignment_dagster.backends.identity import model_identity
from alignment_dagster.core.reporting import StageReport
from alignment_dagster.training.artifacts import read_model_card, write_model_card
from alignment_dagster.training.dpo import DPOTrainingConfig, drop_long_prompts, train_dpo
from alignment_dagster.training.fingerprints import reward_fingerprint, row_digests, training_fingerprint
from alignment_dagster.training.plots import curves_png, reward_scatter_png, training_curves
from alignment_dagster.training.policy_eval import PreferenceEval, implicit_reward_eval
from alignment_dagster.training.retrain import RetrainDecision
from alignment_dagster.training.reward import RewardScorer, RewardTrainingConfig, train_reward_model

HUMAN_SOURCES = ("human", "both")
BAD_ROWS_LOGGED = 5
TRAINING_LOG = "training_log.json"  # log history and trainer metrics, kept with the weights for reuse

logger = logging.getLogger(__name__)


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
            f"{len(train)} training rows (< min_train_rows={min_train_rows}) after leaving out "
            f"{dropped_long} "
            f"whose prompt alone is {max_length}+ tokens: raise max_length, or label more pairs"
        )
    return (
        f"{len(train)} training rows (< min_train_rows={min_train_rows}): this blend has too few labels; "
        "label more pairs or lower min_train_rows"
    )


def skipped_card(work_dir: Path, asset: str, reason: str, **card: Any) -> tuple[Path, dict[str, Any]]:
    """A model folder holding only the card: the partition materializes, loaders raise ModelNotTrained."""
    model_dir = work_dir / "model"
    return model_dir, write_model_card(
        model_dir, {"asset": asset, "trained": False, "skip_reason": reason, **card}
    )


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
    pairs = ps.pairs[~ps.pairs["prompt_id"].isin(set(exclude_prompt_ids))]
    human = ps.labels.rename(columns={"label": "choice"})
    rows = blend_preferences(
        pairs, None, human, Blend(name="hh-heldout", ai_weight=0, eval_fraction=0.0)
    ).dataset
    return rows.head(limit).reset_index(drop=True) if limit else rows


@dataclass
class Training:
    """What training (or reusing it) left: the trainer's log and metrics, its time, steps and resume point."""

    log_history: list[dict[str, Any]]
    train_metrics: dict[str, Any]
    seconds: float
    steps: int = 0  # optimizer steps taken in this run (a resumed run takes only the unfinished ones)
    resumed_from_step: int | None = None
    reused: bool = False
    cluster_job: dict[str, Any] = field(default_factory=dict)  # the Ray job's report, when trained on one

    def metrics(self) -> dict[str, Any]:
        return {
            "train_seconds": self.seconds,
            "steps_this_run": self.steps,
            **{f"train.{k}": v for k, v in self.train_metrics.items()},
        }


def card_basics(
    train: pd.DataFrame, config, card: dict[str, Any] | None, digests: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    """What every model card records about its training: the config, LoRA or not, the training prompts (the
    evals' leakage guard) and rows (`digests`, default `train`'s: the retrain policy's baseline), plus the
    caller's `card` and `extra`."""
    return {
        **extra,
        "lora": config.lora,
        "config": asdict(config),
        "n_train": len(train),
        "train_prompt_ids": sorted(set(train.get("prompt_id", []))),
        "train_row_digests": row_digests(train) if digests is None else digests,
        **(card or {}),
    }


def train_or_reuse(
    model_dir: Path,
    checkpoint_dir: Path,
    fingerprint: str,
    train: Callable[[list], Any],
    *,
    checkpoints=None,
    model_cache=None,
    callbacks: list | None = None,
    cluster: Callable[[], Any] | None = None,
) -> Training:
    """Reuse identical training from `model_cache` (a `StorageModelCache`) or run `train(callbacks)`, first
    restoring the newest checkpoint from `checkpoints` (a `StorageCheckpoints`) into `checkpoint_dir`, where
    the trainer resumes from it; the trained folder then goes into the cache. `cluster()` trains on a
    cluster instead (`compute.cluster_training`): its workers restore and publish the checkpoints, and count
    their own steps."""
    if model_cache is not None and model_cache.get(fingerprint, model_dir):
        log = json.loads((model_dir / TRAINING_LOG).read_text())
        return Training(log["log_history"], log["train_metrics"], log["seconds"], reused=True)
    callbacks = list(callbacks or [])
    resumed = None
    if cluster is not None:
        train, checkpoints = (lambda _: cluster()), None
    if checkpoints is not None:
        resumed = checkpoints.restore_latest(checkpoint_dir)
        callbacks.append(checkpoints.callback())
    counter = step_counter()
    t0 = time.perf_counter()
    result = train([*callbacks, counter])
    training = Training(
        list(result.log_history),
        dict(result.train_metrics),
        time.perf_counter() - t0,
        getattr(result, "steps", counter.steps),
        getattr(result, "resumed_from_step", resumed),
        cluster_job=getattr(result, "report", {}),
    )
    (model_dir / TRAINING_LOG).write_text(
        json.dumps(
            {
                "log_history": training.log_history,
                "train_metrics": training.train_metrics,
                "seconds": training.seconds,
            },
            default=str,
        )
    )
    if model_cache is not None:
        model_cache.put(fingerprint, model_dir)
    return training


def step_counter():
    """A Trainer callback counting the optimizer steps of this run (a resumed run's only: `steps`)."""
    from transformers import TrainerCallback

    class Counter(TrainerCallback):
        steps = 0

        def on_step_end(self, args, state, control, **kwargs):
            self.steps += 1

    return Counter()


@dataclass
class ModelOutcome:
    model_dir: Path
    card: dict[str, Any]
    training: Training | None = None  # None: not trained (too few rows)

    @property
    def trained(self) -> bool:
        return bool(self.card.get("trained"))

    def _report(self) -> StageReport:
        if not self.trained:
            reason = self.card["skip_reason"]
            return StageReport(
                tags={"alignment.trained": "false"},
                summary={"trained": False, "skip_reason": reason},
                texts={"skip_reason.txt": (reason, False)},
            )
        metrics = self.card["metrics"]
        resumed = self.card.get("resumed_from_step")
        report = StageReport(tags={"alignment.stale": "false"}, metrics=dict(metrics))
        report.add(
            trained=True,
            stale=False,
            n_train=self.card["n_train"],
            reused_training=self.card["reused_training"],
            resumed_from_step=resumed if resumed is not None else -1,
        )
        if self.training is not None and self.training.cluster_job:
            job = self.training.cluster_job
            report.add(
                compute="ray", **{k if k.startswith("ray_") else f"ray_{k}": v for k, v in job.items()}
            )
        return report.detail("metrics", metrics)


@dataclass
class RewardOutcome(ModelOutcome):
    scores: dict[str, tuple[list[float], list[float]]] = field(
        default_factory=dict
    )  # set -> (chosen, rejected)

    def report(self, title: str) -> StageReport:
        report = self._report()
        if self.trained:
            metrics = self.card["metrics"]
            report.add(**{k: float(v) for k, v in metrics.items() if k.endswith("accuracy") and v == v})
            report.curves["train_loss"] = [
                (int(e["step"]), e["loss"]) for e in self.training.log_history if "loss" in e
            ]
            report.plot(
                "chosen_vs_rejected",
                reward_scatter_png(self.scores, f"reward_model [{title}]"),
                "chosen vs rejected rewards",
            )
        return report


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
    trainer=None,
) -> RewardOutcome:
    """Train on the train split (or reuse identical training); accuracy on the eval split, its
    human-labelled rows, and held-out pairs. `trainer` (a `compute.cluster_training.ClusterTrainer`) trains
    on a cluster instead, checkpointing where `checkpoints` would."""
    train, evals = split_rows(dataset)
    common = card_basics(train, config, card, backbone=config.backbone_path())
    if reason := too_small(train, min_train_rows):
        return RewardOutcome(*skipped_card(work_dir, "reward_model", reason, **common))
    model_dir = work_dir / "model"
    fingerprint = fingerprint or reward_fingerprint(train, config)
    training = train_or_reuse(
        model_dir,
        model_dir / "checkpoints",
        fingerprint,
        lambda cbs: train_reward_model(train, config, model_dir, callbacks=cbs),
        checkpoints=checkpoints,
        model_cache=model_cache,
        callbacks=callbacks,
        cluster=trainer and (lambda: trainer(train, config, model_dir)),
    )
    scorer = RewardScorer(model_dir)
    sets = {"eval": evals, "eval_human": evals[evals["source"].isin(HUMAN_SOURCES)] if len(evals) else evals}
    if heldout is not None:
        sets["hh_heldout"] = heldout
    metrics, scores = training.metrics(), {}
    for name, df in sets.items():
        acc, chosen, rejected = scorer.accuracy(df)
        metrics.update({f"{name}.n": len(df), f"{name}.accuracy": acc})
        scores[name] = (chosen, rejected)
    card = write_model_card(
        model_dir,
        {
            "asset": "reward_model",
            "trained": True,
            "metrics": metrics,
            "fingerprint": fingerprint,
            "reused_training": training.reused,
            "resumed_from_step": training.resumed_from_step,
            **common,
        },
    )
    return RewardOutcome(model_dir, card, training, scores)


@dataclass
class PolicyOutcome(ModelOutcome):
    evaluation: PreferenceEval | None = None

    def report(self, title: str) -> StageReport:
        report = self._report()
        report.add(lora=self.card["lora"], dropped_long_prompts=self.card["dropped_long_prompts"])
        if self.trained:
            accuracy = self.card["metrics"].get("eval.accuracy", float("nan"))
            report.add(eval_accuracy=float(accuracy))
            curves = training_curves(self.training.log_history)
            report.curves.update({key.replace("/", "_"): points for key, points in curves.items()})
            report.plot("training_curves", curves_png(curves, f"dpo_policy [{title}]"), "DPO training curves")
            if self.evaluation is not None and len(self.evaluation.rows):
                report.table("eval_pairs", self.evaluation.rows)
        return report


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
    trainer=None,
) -> PolicyOutcome:
    """DPO on the train split (or reuse identical training); implicit-reward accuracy on the eval split
    against the base. `trainer`: on a cluster instead (see `fit_reward_model`)."""
    train, evals = split_rows(dataset)
    base_path, base_identity = model_identity("transformers", base_model)
    digests = row_digests(train)  # before dropping long prompts: the rows the retrain policy sees next time
    train, dropped_long = drop_long_prompts(train, base_path, config)
    common = card_basics(
        train,
        config,
        card,
        digests,
        base_model=base_model,
        base_model_path=base_path,
        dropped_long_prompts=dropped_long,
    )
    if reason := too_small(train, min_train_rows, dropped_long, config.max_length):
        return PolicyOutcome(*skipped_card(work_dir, "dpo_policy", reason, **common))
    fingerprint = fingerprint or training_fingerprint(train, config, base_identity)
    model_dir = work_dir / "model"
    training = train_or_reuse(
        model_dir,
        work_dir / "checkpoints",
        fingerprint,
        lambda cbs: train_dpo(train, base_path, config, work_dir, callbacks=cbs),
        checkpoints=checkpoints,
        model_cache=model_cache,
        callbacks=callbacks,
        cluster=trainer and (lambda: trainer(train, config, model_dir, base_path)),
    )
    evaluation = evaluate_policy(
        model_dir, base_path, config, evals.head(eval_limit) if eval_limit else evals
    )
    card = write_model_card(
        model_dir,
        {
            "asset": "dpo_policy",
            "trained": True,
            "metrics": {**training.metrics(), **evaluation.metrics("eval.")},
            "resumed_from_step": training.resumed_from_step,
            "fingerprint": fingerprint,
            "reused_training": training.reused,
            **common,
        },
    )
    return PolicyOutcome(model_dir, card, training, evaluation)


@dataclass
class KeptOutcome(ModelOutcome):
    """The partition keeps its current model: the retrain policy found too little new data."""

    decision: RetrainDecision | None = None

    def report(self, title: str) -> StageReport:
        metrics = {**self.card.get("metrics", {}), "steps_this_run": 0}
        report = StageReport(tags={"alignment.stale": "true"}, metrics=metrics)
        report.add(
            trained=True,
            stale=True,
            retrain=self.decision.reason,
            new_rows=self.decision.new_rows,
            n_train=self.card["n_train"],
            reused_training=True,
            resumed_from_step=-1,
            registered_model=self.card.get("registered_model", ""),
        )
        return report.detail("metrics", metrics)


def keep_current(current_dir: Path, work_dir: Path, decision: RetrainDecision) -> KeptOutcome:
    """A copy of the partition's current model folder, its card marked stale with the reason."""
    model_dir = work_dir / "model"
    shutil.copytree(current_dir, model_dir, ignore=shutil.ignore_patterns("_MANIFEST.json"))
    card = {**read_model_card(model_dir), "stale": True, "retrain_skipped": decision.reason}
    return KeptOutcome(model_dir, write_model_card(model_dir, card), decision=decision)


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
