"""Training checkpoints mirrored to pipeline storage (local or S3), so a killed training run resumes.

The trainer writes `checkpoint-<step>` folders locally; `StorageCheckpoints.callback()` publishes each one to
`<prefix>/checkpoint-<step>/` as soon as it is saved (atomically: a reader sees a whole checkpoint or none)
and drops older ones. Before training, `restore_latest` brings the newest back into the local folder, where
`train_dpo` and `train_reward_model` find it (`last_checkpoint`) and resume. The prefix ends in a
fingerprint of everything that determines training (data, config, base model), so a changed dataset or
config never resumes a stale run.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from alignment_dagster.core.storage import MANIFEST, Storage

_CKPT = re.compile(r"checkpoint-(\d+)")


def last_checkpoint(ckpt_dir: Path) -> str | None:
    """The trainer's newest local `checkpoint-<step>` folder in ckpt_dir, for `resume_from_checkpoint`."""
    ckpts = sorted(ckpt_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return str(ckpts[-1]) if ckpts else None


class StorageCheckpoints:
    def __init__(self, store: Storage, prefix: str, keep: int = 1):
        self.store = store
        self.prefix = prefix.rstrip("/")
        self.keep = keep

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints in storage (manifest present), ascending."""
        found = set()
        for key in self.store.list(self.prefix):
            rel = key[len(self.prefix) + 1 :].split("/")
            if len(rel) == 2 and rel[1] == MANIFEST and (m := _CKPT.fullmatch(rel[0])):
                found.add(int(m.group(1)))
        return sorted(found)

    def restore_latest(self, local_dir: Path) -> int | None:
        """Copy the newest stored checkpoint to `local_dir/checkpoint-<step>`; its step, or None."""
        steps = self.steps()
        if not steps:
            return None
        dest = Path(local_dir) / f"checkpoint-{steps[-1]}"
        if dest.exists():
            shutil.rmtree(dest)
        self.store.get_dir(f"{self.prefix}/checkpoint-{steps[-1]}", dest)
        (dest / MANIFEST).unlink(missing_ok=True)
        return steps[-1]

    def publish(self, local_checkpoint: Path) -> None:
        step = int(_CKPT.fullmatch(local_checkpoint.name).group(1))  # type: ignore[union-attr]
        self.store.put_dir(f"{self.prefix}/checkpoint-{step}", local_checkpoint)
        for old in self.steps()[: -self.keep]:
            self.store.delete_prefix(f"{self.prefix}/checkpoint-{old}")

    def clear(self) -> None:
        """Remove this run's checkpoints (once the final model is safe in storage)."""
        self.store.delete_prefix(self.prefix)

    def clear_stale(self) -> list[str]:
        """Remove sibling fingerprints: checkpoints of older data or configs that can never be resumed."""
        parent, own = self.prefix.rsplit("/", 1)
        stale = sorted({k[len(parent) + 1 :].split("/", 1)[0] for k in self.store.list(parent)} - {own})
        for fp in stale:
            self.store.delete_prefix(f"{parent}/{fp}")
        return stale

    def callback(self) -> Any:
        from transformers import TrainerCallback

        sync = self

        class PublishCheckpoint(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                # Called right after the Trainer wrote checkpoint-<global_step> (weights, optimizer, RNG).
                if state.is_world_process_zero:
                    sync.publish(Path(args.output_dir) / f"checkpoint-{state.global_step}")

        return PublishCheckpoint()


class StorageModelCache:
    """Trained model folders in storage keyed by training fingerprint (`cache/models/<asset>/<fp>/`):
    another partition whose training rows, config and base are identical (e.g. the same human labels under
    two constitution versions, or two blends that keep the same rows) reuses the weights instead of
    training again. Each partition still gets its own card, evaluation and registered version."""

    def __init__(self, store: Storage, asset: str):
        self.store = store
        self.prefix = f"cache/models/{asset}"

    def get(self, fingerprint: str, dest: Path) -> bool:
        key = f"{self.prefix}/{fingerprint}"
        if not self.store.dir_exists(key):
            return False
        if dest.exists():
            shutil.rmtree(dest)
        self.store.get_dir(key, dest)
        (dest / MANIFEST).unlink(missing_ok=True)
        return True

    def put(self, fingerprint: str, model_dir: Path) -> None:
        # Content-addressed: the entry shares its weights' blobs with the partitions and MLflow versions.
        self.store.put_dir(f"{self.prefix}/{fingerprint}", model_dir, content_addressed=True)
