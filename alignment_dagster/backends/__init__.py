"""Model backends behind one interface (`Backend`): transformers (default), OpenAI-compatible, vLLM."""

from alignment_dagster.backends.base import (
    Backend,
    BackendSpec,
    CallStats,
    Conversation,
    Message,
    Sampling,
    item_seed,
)


def make_backend(spec: BackendSpec | None = None) -> Backend:
    """Build the backend a spec names; heavy imports happen only for the kind used."""
    spec = spec or BackendSpec()
    if spec.adapter is not None and spec.kind != "transformers":
        # vLLM can serve LoRA adapters, but only when started for it; merge first or use transformers here.
        raise ValueError(
            f"BackendSpec.adapter is applied by the transformers backend only, not {spec.kind!r}"
        )
    if spec.kind == "transformers":
        from alignment_dagster.backends.transformers_backend import TransformersBackend

        return TransformersBackend(spec)
    if spec.kind == "openai":
        from alignment_dagster.backends.openai_backend import OpenAIBackend

        return OpenAIBackend(spec)
    if spec.kind == "vllm":
        from alignment_dagster.backends.vllm_backend import VLLMBackend

        return VLLMBackend(spec)
    raise ValueError(f"unknown backend kind {spec.kind!r}")


__all__ = [
    "Backend",
    "BackendSpec",
    "CallStats",
    "Conversation",
    "Message",
    "Sampling",
    "item_seed",
    "make_backend",
]
