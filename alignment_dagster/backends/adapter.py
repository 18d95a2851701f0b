"""Trained policies on top of a base model: a LoRA adapter folder (merged in memory) or a full fine-tune.

`dpo_policy` stores either a PEFT adapter (`adapter_config.json` + `adapter_model.safetensors`) or, with
`lora=False`, a whole model folder. `BackendSpec.adapter` points at either; the identity names the folder's
content hash so cached generations of the base model and of each policy never mix.

A policy trained from another one (DPO from `sft_policy`, the two-phase flow) carries the adapter it started
from in `start/`: that one is merged into the base first, then the policy's own.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from alignment_dagster.backends.identity import NOT_LOADED, file_digest


def adapter_kind(adapter: str | Path) -> str:
    """'lora' for a PEFT adapter folder, 'full' for a complete model folder; a clear error otherwise."""
    path = Path(adapter)
    if not path.is_dir():
        raise FileNotFoundError(f"adapter folder {path} does not exist")
    if (path / "alignment.json").is_file():
        from alignment_dagster.training.artifacts import ensure_trained

        ensure_trained(path)  # a skipped dpo_policy partition: ModelNotTrained with the reason
    if (path / "adapter_config.json").is_file():
        return "lora"
    if (path / "config.json").is_file():
        return "full"
    raise ValueError(f"{path} holds neither a PEFT adapter (adapter_config.json) nor a model (config.json)")


def weights_path(base_path: str, adapter: str | None) -> str:
    """The folder whose weights are loaded first: a full fine-tune replaces the base entirely."""
    if adapter is not None and adapter_kind(adapter) == "full":
        return str(adapter)
    return base_path


START = "start"  # the adapter a policy was trained on top of, merged before its own


def apply_adapter(model, adapter: str | None):
    """Merge a LoRA adapter into the loaded base model (in memory; merged inference is as fast as the base),
    after the adapter it started from (`start/`), if any. A full fine-tune was already loaded by
    `weights_path`, so nothing is left to do."""
    if adapter is None or adapter_kind(adapter) == "full":
        return model
    from peft import PeftModel

    start = Path(adapter) / START
    if (start / "adapter_config.json").is_file():
        model = PeftModel.from_pretrained(model, str(start)).merge_and_unload()
    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()


_HASHED = (".json", ".safetensors", ".bin", ".jinja", ".txt")


def adapter_hash(adapter: str | Path) -> str:
    """Content hash of a policy folder's top-level files and its `start/` adapter's (weights and configs); a
    folder without `start/` hashes as before. The card and storage's manifest are left out (`NOT_LOADED`):
    the same policy read from storage, downloaded from MLflow or kept by the retrain policy is one model."""
    h = hashlib.sha256()
    for f in sorted([*Path(adapter).glob("*"), *(Path(adapter) / START).glob("*")]):
        if f.is_file() and f.name not in NOT_LOADED and f.suffix in _HASHED:
            name = f.relative_to(adapter).as_posix()
            h.update(name.encode() + b"\0" + file_digest(f).encode())
    return h.hexdigest()[:12]


def adapter_identity(base_identity: str, adapter: str | None) -> str:
    """Base identity plus the adapter's content hash (weights and configs, not its path)."""
    if adapter is None:
        return base_identity
    return f"{base_identity}+{adapter_kind(adapter)}@{adapter_hash(adapter)}"
