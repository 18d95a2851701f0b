"""Model backend resources: which model serves policy sampling and which serves judging."""

from __future__ import annotations

from typing import Literal

from dagster import ConfigurableResource
from pydantic import Field

from alignment_dagster.backends import Backend, BackendSpec, make_backend

_LOADED: dict[str, Backend] = {}  # one loaded model per spec per process, shared by the steps in it


class ModelBackendResource(ConfigurableResource):
    """A backend spec (see `BackendSpec`); the API key is named by `api_key_env`, never stored here."""

    kind: Literal["transformers", "openai", "vllm"] = "transformers"
    model: str | None = Field(
        None, description="Local path or hub id; empty = embedded SmolLM2-135M-Instruct."
    )
    base_url: str | None = Field(None, description="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    served_model: str | None = None
    api_key_env: str | None = None
    device: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = 16
    max_concurrency: int = 8
    timeout_s: float = 60.0
    max_retries: int = 5

    def spec(self) -> BackendSpec:
        return BackendSpec(**self.model_dump())

    def backend(self) -> Backend:
        spec = self.spec()
        key = spec.model_dump_json()
        if key not in _LOADED:
            _LOADED[key] = make_backend(spec)
        return _LOADED[key]
