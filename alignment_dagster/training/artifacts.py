"""Trained model folders: the `alignment.json` card, reloading from storage or from the MLflow registry.

A registered version does not copy the weights into MLflow's artifact store: it records each file's SHA-256
(`_CONTENT.json`) and the pipeline storage that holds them as blobs, so the weights are on disk once however
many partitions and versions share them; `download_registered` rebuilds the folder and checks every digest.

Every model folder `reward_model` / `dpo_policy` store carries `alignment.json`: what it was trained from
(base model or backbone, LoRA or full), on which prompts (the eval leakage guard reads `train_prompt_ids`),
for which partition and blend, and its metrics. A partition whose blend left too few training rows gets a
folder with only the card (`trained: false`, `skip_reason`); every loader raises `ModelNotTrained` for it,
so a caller (evals) can report the reason instead of crashing on missing weights.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from alignment_dagster.core.storage import BLOBS, Storage, file_sha256, open_storage, tree_sha256

MODEL_CARD = "alignment.json"
CONTENT = "_CONTENT.json"  # in a registered version's artifacts: its files by SHA-256, in pipeline storage


class ModelNotTrained(RuntimeError):
    """The folder holds only a card: training was skipped (see `skip_reason`)."""


def write_model_card(model_dir: Path, card: dict[str, Any]) -> dict[str, Any]:
    """Write the card; returns it as a reader will see it (JSON round trip)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(card, indent=1, sort_keys=True, default=str)
    (model_dir / MODEL_CARD).write_text(text)
    return json.loads(text)


def read_model_card(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / MODEL_CARD
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no model card; not a folder written by reward_model or dpo_policy")
    return json.loads(path.read_text())


def is_trained(model_dir: str | Path) -> bool:
    """False for a skipped partition's card-only folder (and for folders without a card: nothing to load)."""
    path = Path(model_dir) / MODEL_CARD
    return path.is_file() and bool(json.loads(path.read_text()).get("trained"))


def ensure_trained(model_dir: str | Path) -> dict[str, Any]:
    card = read_model_card(model_dir)
    if not card.get("trained"):
        raise ModelNotTrained(
            f"{model_dir}: {card.get('asset', 'model')} for {card.get('partition')} was not trained: "
            f"{card.get('skip_reason', 'no reason recorded')}"
        )
    return card


def load_reward_scorer(model_dir: str | Path, batch_size: int = 32):
    """A `RewardScorer` for a `reward_model` folder (from storage, or downloaded from MLflow)."""
    from alignment_dagster.training.reward import RewardScorer

    ensure_trained(model_dir)
    return RewardScorer(model_dir, batch_size=batch_size)


def policy_base_path(card: dict[str, Any]) -> str:
    """The base model a policy was trained on: the card names a path or hub id, or None = embedded SmolLM2
    (resolved on this machine, so a folder moved between machines still finds its base)."""
    if card.get("base_model") is None:
        from alignment_dagster.backends.embedded import embedded_model_path

        return str(embedded_model_path())
    return str(card["base_model"])


def load_policy(model_dir: str | Path, merge: bool = True, dtype: Any = None):
    """(model, tokenizer) of a `dpo_policy` or `sft_policy` folder. LoRA: the base (with the `start/`
    adapter merged, for DPO trained from sft_policy) with the adapter, merged unless `merge=False` (then
    `disable_adapter()` gives the reference model). Full fine-tune: the folder itself."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    card = ensure_trained(model_dir)
    dtype = dtype or torch.float32
    base = policy_base_path(card)
    tok = AutoTokenizer.from_pretrained(base)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not card.get("lora", True):
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval(), tok
    from peft import PeftModel

    from alignment_dagster.backends.adapter import START

    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    if (Path(model_dir) / START / "adapter_config.json").is_file():  # trained from sft_policy
        model = PeftModel.from_pretrained(model, str(Path(model_dir) / START)).merge_and_unload()
    model = PeftModel.from_pretrained(model, str(model_dir))
    return (model.merge_and_unload() if merge else model).eval(), tok


def card_context(
    constitution: str,
    blend_key: str,
    blend_name: str,
    blend_hash: str,
    run_id: str,
    dataset_version: str = "",
    **extra: Any,
) -> dict:
    """What a model card records about where it was trained: partition, blend, Dagster run, the version of
    the preference dataset (what the comparison names), plus `extra`."""
    return {
        "partition": {"constitution": constitution, "blend": blend_key},
        "blend_name": blend_name,
        "blend_hash": blend_hash,
        "dagster_run_id": run_id,
        "dataset_version": dataset_version,
        **extra,
    }


def registered_model_name(kind: str, constitution: str, blend: str) -> str:
    """e.g. `reward-harmless-1a2b3c4d-hybrid`; only characters every registry backend accepts."""
    raw = f"{kind}-{constitution}-{blend}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", raw).strip("-.")[:200]


def log_and_register(
    client: Any,
    run_id: str,
    local_dir: Path,
    name: str,
    store: Storage,
    artifact_path: str = "model",
    tags: dict[str, str] | None = None,
    description: str | None = None,
) -> Any:
    """Register a model folder as a new version of `name` (created if new) that refers to its files by
    content: they go to `store`'s blobs (once, `core.storage`), and the run's `model/` artifacts hold the
    card and `_CONTENT.json` (path -> SHA-256 and size, and the store) instead of another copy of the weights.
    `download_registered` turns such a version back into the folder."""
    import tempfile

    from mlflow.exceptions import MlflowException

    digests = store.put_blobs(local_dir)
    content = {
        "store": store.uri,
        "blobs": BLOBS,
        "files": {rel: {"sha256": d, "size": (local_dir / rel).stat().st_size} for rel, d in digests.items()},
        "content_sha256": tree_sha256(digests),
    }
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / CONTENT).write_text(json.dumps(content, indent=1, sort_keys=True))
        if (local_dir / MODEL_CARD).is_file():  # small, and what the MLflow UI should show
            (Path(tmp) / MODEL_CARD).write_bytes((local_dir / MODEL_CARD).read_bytes())
        client.log_artifacts(run_id, tmp, artifact_path)
    try:
        client.create_registered_model(name, description=description)
    except MlflowException as e:
        if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
            raise
    version_tags = {k: str(v) for k, v in (tags or {}).items()}
    return client.create_model_version(
        name,
        source=f"runs:/{run_id}/{artifact_path}",
        run_id=run_id,
        tags={**version_tags, "alignment.content_sha256": content["content_sha256"]},
    )


def fetch_content(folder: Path, store: Storage | None = None) -> Path:
    """Fill a downloaded model version's folder with the files its `_CONTENT.json` names, from `store`
    (default: the store recorded at registration), each checked against its SHA-256; then drop the
    reference, so the folder is the one that was registered. A folder without one is returned as it is."""
    ref_path = folder / CONTENT
    if not ref_path.is_file():
        return folder
    ref = json.loads(ref_path.read_text())
    store = store or open_storage(ref["store"])
    for rel, entry in ref["files"].items():
        dest = folder / rel
        try:
            store.get_blob(entry["sha256"], dest)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{ref_path}: {rel} (sha256 {entry['sha256']}) is not in {store.uri}'s blobs"
            ) from None
        if file_sha256(dest) != entry["sha256"]:
            raise ValueError(
                f"{ref_path}: {rel} from {store.uri} does not match its sha256 {entry['sha256']}"
            )
    ref_path.unlink()
    return folder


def download_registered(
    model_uri: str,
    dst: Path,
    tracking_uri: str,
    registry_uri: str | None = None,
    store: Storage | None = None,
) -> Path:
    """`models:/<name>/<version>` -> a local folder the loaders above accept (weights from `store`, by
    default the one the version was registered from)."""
    import mlflow.artifacts
    from mlflow.tracking import MlflowClient

    name, _, version = model_uri.removeprefix("models:/").partition("/")
    if not model_uri.startswith("models:/") or not name or not version.isdigit():
        raise ValueError(f"{model_uri!r}: expected models:/<name>/<version>")
    # Resolved through an explicit client: mlflow's `models:/` download path consults the process-wide
    # registry URI, not the one passed in, and would look in the wrong store.
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri or tracking_uri)
    source = client.get_model_version_download_uri(name, version)
    dst.mkdir(parents=True, exist_ok=True)
    folder = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst), tracking_uri=tracking_uri)
    )
    return fetch_content(folder, store)
