"""Training checkpoints in storage (local folder and a real S3 endpoint), and the training stage configs."""

from pathlib import Path

import boto3
import pandas as pd
import pytest

from alignment_dagster.core.storage import LocalStorage, open_storage
from alignment_dagster.training.checkpoints import StorageCheckpoints
from alignment_dagster.training.dpo import DPOTrainingConfig
from alignment_dagster.training.stages import training_fingerprint

PREFIX = "checkpoints/dpo_policy/c-1/hybrid"


def fake_checkpoint(root: Path, step: int) -> Path:
    d = root / f"checkpoint-{step}"
    (d / "nested").mkdir(parents=True)
    (d / "adapter_model.safetensors").write_bytes(bytes([step]) * 64)
    (d / "nested" / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    return d


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path: Path):
    if request.param == "local":
        return LocalStorage(tmp_path / "root")
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    return open_storage(f"s3://{bucket}/pipeline", lambda: boto3.client("s3", endpoint_url=endpoint))


def test_publish_keeps_the_latest_and_restores_it(store, tmp_path: Path) -> None:
    ckpts = StorageCheckpoints(store, f"{PREFIX}/fp-a")
    assert ckpts.steps() == [] and ckpts.restore_latest(tmp_path / "local") is None
    for step in (5, 10):
        ckpts.publish(fake_checkpoint(tmp_path / "trainer", step))
    assert ckpts.steps() == [10]  # older checkpoints are dropped once a newer one is complete
    assert ckpts.restore_latest(tmp_path / "local") == 10
    restored = tmp_path / "local" / "checkpoint-10"
    assert (restored / "adapter_model.safetensors").read_bytes() == bytes([10]) * 64
    assert (restored / "nested" / "trainer_state.json").read_text() == '{"global_step": 10}'
    assert not (restored / "_MANIFEST.json").exists()

    other = StorageCheckpoints(store, f"{PREFIX}/fp-b")
    other.publish(fake_checkpoint(tmp_path / "trainer-b", 3))
    assert other.clear_stale() == ["fp-a"] and ckpts.steps() == [] and other.steps() == [3]
    other.clear()
    assert other.steps() == [] and not store.list(PREFIX)


def test_fingerprint_follows_rows_config_and_base() -> None:
    rows = pd.DataFrame(
        {
            "pair_id": ["a", "b"],
            "weight": [1.0, 0.5],
            "prompt": [[{"role": "user", "content": q}] for q in ("q1", "q2")],
            "chosen": [[{"role": "assistant", "content": c}] for c in ("good1", "good2")],
            "rejected": [[{"role": "assistant", "content": c}] for c in ("bad1", "bad2")],
        }
    )
    cfg = DPOTrainingConfig(max_steps=10)
    fp = training_fingerprint(rows, cfg, "base@1")
    assert fp == training_fingerprint(
        rows, DPOTrainingConfig(max_steps=10, save_steps=3, logging_steps=2), "base@1"
    )
    assert fp != training_fingerprint(rows.assign(weight=[1.0, 0.6]), cfg, "base@1")
    # Training normalises weights to mean 1, so a blend that scales every weight trains the same model.
    assert fp == training_fingerprint(rows.assign(weight=[2.0, 1.0]), cfg, "base@1")
    flipped = rows.assign(chosen=rows["rejected"], rejected=rows["chosen"])
    assert fp != training_fingerprint(flipped, cfg, "base@1")  # same pair ids, other reply chosen
    assert fp != training_fingerprint(rows, DPOTrainingConfig(max_steps=11), "base@1")
    assert fp != training_fingerprint(rows, cfg, "base@2")


def test_presets_and_overrides() -> None:
    from alignment_dagster.assets.dpo_policy import DPOPolicyConfig
    from alignment_dagster.assets.reward_model import RewardModelConfig

    cpu = DPOPolicyConfig().training_config()
    assert (cpu.max_steps, cpu.batch_size, cpu.lora, cpu.weighted, cpu.bf16) == (10, 2, True, True, False)
    gpu = DPOPolicyConfig(preset="gpu", lora=False, max_steps=100).training_config()
    assert (
        gpu.bf16
        and gpu.gradient_checkpointing
        and gpu.batch_size == 16
        and not gpu.lora
        and gpu.max_steps == 100
    )
    rm = RewardModelConfig(preset="gpu", batch_size=4).training_config()
    assert rm.bf16 and rm.gradient_checkpointing and rm.batch_size == 4 and rm.max_steps == -1
    assert RewardModelConfig().training_config().max_steps == 30
    # Checkpoint intervals: the same field for both trainers (on CPU, reward checkpoints cost more than
    # steps).
    assert DPOPolicyConfig().training_config().save_steps == 5
    assert RewardModelConfig().training_config().save_steps == 25
    for cls in (DPOPolicyConfig, RewardModelConfig):
        assert cls(preset="gpu").training_config().save_steps == 50
        assert cls(preset="gpu", save_steps=7).training_config().save_steps == 7


def test_reward_fingerprint_ignores_bookkeeping_knobs() -> None:
    from alignment_dagster.training.reward import RewardTrainingConfig
    from alignment_dagster.training.stages import reward_fingerprint

    rows = pd.DataFrame(
        {
            "margin": [1.0, 0.5],
            "prompt": [[{"role": "user", "content": "q"}]] * 2,
            "chosen": [[{"role": "assistant", "content": c}] for c in ("good1", "good2")],
            "rejected": [[{"role": "assistant", "content": c}] for c in ("bad1", "bad2")],
        }
    )
    fp = reward_fingerprint(rows, RewardTrainingConfig(max_steps=10))
    # Checkpoints of a run that saved every 50 steps resume one that saves every 5: the weights are the same.
    assert fp == reward_fingerprint(rows, RewardTrainingConfig(max_steps=10, save_steps=5, logging_steps=1))
    assert fp != reward_fingerprint(rows, RewardTrainingConfig(max_steps=11))
    assert fp != reward_fingerprint(rows.assign(margin=[1.0, 0.6]), RewardTrainingConfig(max_steps=10))
