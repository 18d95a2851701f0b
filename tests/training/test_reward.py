"""Reward model: TRL RewardTrainer on the real MiniLM encoder and real HH-RLHF human labels."""

import math
from pathlib import Path

import pytest

from alignment_dagster.data.blending import blend_preferences
from alignment_dagster.data.pairs import import_pairs
from alignment_dagster.specs.blend import Blend
from alignment_dagster.training.reward import (
    RewardScorer,
    RewardTrainingConfig,
    encode_pair,
    train_reward_model,
)
from tests.conftest import SHARED_DATA


def binomial_p_above_half(k: int, n: int) -> float:
    """One-sided P(X >= k) for X ~ Binomial(n, 0.5)."""
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n


@pytest.fixture(scope="module")
def hh_dataset():
    ps = import_pairs([str(SHARED_DATA)], lambda u: Path(u).read_bytes())
    human = ps.labels.rename(columns={"label": "choice"})
    return blend_preferences(
        ps.pairs, None, human, Blend(name="human-only", ai_weight=0, eval_fraction=0.3)
    ).dataset


@pytest.mark.slow
def test_reward_model_beats_chance_on_held_out_prompts(hh_dataset, tmp_path: Path) -> None:
    train = hh_dataset[hh_dataset["split"] == "train"].head(500)
    held_out = hh_dataset[hh_dataset["split"] == "eval"].head(300)
    assert not set(train["prompt_id"]) & set(held_out["prompt_id"])  # split by prompt: no leak
    result = train_reward_model(
        train, RewardTrainingConfig(max_length=128, learning_rate=1e-4), tmp_path / "rm"
    )
    assert result.train_metrics["epoch"] == 1.0
    files = {p.name for p in (tmp_path / "rm").iterdir()}
    assert "model.safetensors" in files and "reward_config.json" in files
    assert not any(f.endswith((".bin", ".pkl", ".pt")) for f in files)

    scorer = RewardScorer(tmp_path / "rm")
    acc, chosen, rejected = scorer.accuracy(held_out)
    k = sum(c > r for c, r in zip(chosen, rejected, strict=True))
    p = binomial_p_above_half(k, len(held_out))
    print(f"reward model held-out accuracy {acc:.3f} (n={len(held_out)}, one-sided p={p:.2g})")
    assert p < 0.01, f"held-out accuracy {acc:.3f} is not significantly above chance (p={p:.3f})"
    # Reloading gives the same scores (weights round-trip through safetensors).
    again = RewardScorer(tmp_path / "rm").score(list(held_out["prompt"][:5]), list(held_out["chosen"][:5]))
    assert again == pytest.approx(chosen[:5], abs=1e-5)


def test_encoding_keeps_the_reply_and_cuts_old_turns() -> None:
    from alignment_dagster.training.reward import _load_tokenizer, embedded_encoder_path

    tok = _load_tokenizer(str(embedded_encoder_path()))
    conv = " ".join(f"turn{i}" for i in range(400))
    ids = encode_pair(tok, conv, "the final reply", 64)
    assert len(ids) == 64
    text = tok.decode(ids)
    assert "the final reply" in text and "turn399" in text.replace(" ", "") and "turn0 " not in text
