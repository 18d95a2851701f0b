"""Model identity strings (name + content hash) for cache keys and MLflow params."""

from __future__ import annotations

import hashlib
from pathlib import Path

from alignment_dagster.core.storage import MANIFEST

_HASHES: dict[tuple[str, int, int], str] = {}


def file_digest(f: Path) -> str:
    st = f.stat()
    memo = (str(f.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _HASHES:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        _HASHES[memo] = h.hexdigest()
    return _HASHES[memo]


# The pipeline's model card and storage manifest sit beside the weights but are never loaded: a model kept by
# the retrain policy (same weights, a card marked stale) keeps its identity, and so its cached generations.
NOT_LOADED = frozenset({"alignment.json", MANIFEST})


def content_hash(path: Path) -> str:
    """Revision id of a local model folder: a hash over the *content* of its config, tokenizer and weight
    files. Sizes or mtimes would not do: a fine-tune saved over the same path keeps every tensor's shape."""
    h = hashlib.sha256()
    for f in sorted(path.glob("*")):  # top level only: what from_pretrained loads (not checkpoint-* folders)
        if f.name in NOT_LOADED:
            continue
        if f.is_file() and f.suffix in (".json", ".safetensors", ".bin", ".jinja", ".model", ".txt", ".gguf"):
            h.update(f.name.encode() + b"\0" + file_digest(f).encode())
    return h.hexdigest()[:12]


def model_identity(engine: str, model: str | None, config=None) -> tuple[str, str]:
    """(path to load, identity string) for a spec's model: None = the embedded SmolLM2."""
    if model is None:
        from alignment_dagster.backends.embedded import MODEL_NAME, embedded_model_path

        path, name = str(embedded_model_path()), MODEL_NAME
    else:
        path, name = model, model
    local = Path(path)
    if local.is_dir():
        revision = content_hash(local)
    else:  # hub id: the commit the weights were resolved to
        revision = getattr(config, "_commit_hash", None) or "hub"
    return path, f"{engine}:{name}@{revision}"
