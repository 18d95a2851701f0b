"""Training fingerprints: a hash of exactly what determines a training run (its rows as training uses them,
every config knob but the bookkeeping ones, the base weights). Checkpoints and the trained-model cache are
keyed by it, so only an identical run resumes or reuses them."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pandas as pd

from alignment_dagster.core.keys import canonical_json, sha256_hex
from alignment_dagster.training.dpo import WEIGHT_COLUMN, DPOTrainingConfig, normalised_weights
from alignment_dagster.training.reward import RewardTrainingConfig

BOOKKEEPING = ("logging_steps", "save_steps")  # how often to log or checkpoint: not what is trained


def pair_digests(train: pd.DataFrame) -> list[str]:
    """One digest per training row's content: the pair and which reply is chosen (two blends can label the
    same pair in opposite directions)."""
    return [
        sha256_hex(canonical_json([list(r.prompt), list(r.chosen), list(r.rejected)]))[:16]
        for r in train.itertuples(index=False)
    ]


def row_digests(train: pd.DataFrame) -> list[str]:
    """`pair_digests` with each row's raw weight, so the retrain policy counts a reweighted row as a changed
    one (fingerprints normalise weights instead: scaling all of them trains the same model)."""
    weights = train[WEIGHT_COLUMN] if WEIGHT_COLUMN in train else pd.Series(1.0, index=train.index)
    return [
        sha256_hex(canonical_json([d, round(float(w), 6)]))[:16]
        for d, w in zip(pair_digests(train), weights, strict=True)
    ]


def training_fingerprint(train: pd.DataFrame, config: DPOTrainingConfig, base_identity: str) -> str:
    """A policy training run: its rows (content, chosen side, the weights normalised as training uses them),
    the config and the base weights."""
    knobs = {k: v for k, v in asdict(config).items() if k not in BOOKKEEPING}
    rows: list = []
    if len(train):
        weights = (
            normalised_weights(train[WEIGHT_COLUMN])
            if config.weighted and WEIGHT_COLUMN in train
            else [1.0] * len(train)
        )
        rows = [[d, round(w, 9)] for d, w in zip(pair_digests(train), weights, strict=False)]
    return sha256_hex(canonical_json({"rows": rows, "config": knobs, "base": base_identity}))[:16]


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
        [[d, round(m, 9)] for d, m in zip(pair_digests(train), margins, strict=False)] if len(train) else []
    )
    knobs = {k: v for k, v in asdict(config).items() if k not in BOOKKEEPING}
    base = content_hash(backbone) if backbone.is_dir() else str(backbone)
    return sha256_hex(canonical_json({"rows": rows, "config": knobs, "backbone": base}))[:16]
