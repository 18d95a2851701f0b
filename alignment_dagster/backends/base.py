"""The one model interface every stage uses: generate, choice_probabilities, identity, and call counters."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from alignment_dagster.core.redaction import credentials_in

Message = dict[str, str]
Conversation = list[Message]


class Sampling(BaseModel):
    """Generation settings shared by all backends."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(0.8, ge=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(128, ge=1)
    seed: int = 0


class BackendSpec(BaseModel):
    """Which backend and model serve a use (policy sampling, judging, evals). Secrets are never fields:
    `api_key_env` names the environment variable that holds the key, and a `base_url` with credentials in it
    is refused (it would be stored with every run's configuration, and sent as Basic auth instead of the
    key)."""

    # Refused values are not echoed in errors: a value in the wrong field may be a secret.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    kind: Literal["transformers", "openai", "vllm"] = "transformers"
    model: str | None = Field(
        None, description="Local path or hub id; None = the embedded SmolLM2-135M-Instruct."
    )
    adapter: str | None = Field(
        None,
        description="transformers: a trained policy folder on top of `model` (a PEFT LoRA adapter, merged in "
        "memory, or a full fine-tune); its content hash joins the identity so caches never mix base and "
        "policy.",
    )
    # transformers / vllm
    device: str | None = Field(None, description="cpu / cuda; None picks cuda when available.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = Field(16, ge=1)
    cpu_threads: int | None = Field(
        None,
        ge=1,
        description="torch intra-op threads on CPU (process-wide); None keeps torch's default. "
        "1 avoids OpenMP oversubscription when other processes (a vllm serve, parallel runs) share the "
        "cores.",
    )
    share_prefixes: bool = Field(
        True,
        description="transformers: run the tokens that several prompts share once (a judge pair's "
        "conversation for both orders and every principle, each order's replies for its principles); results "
        "equal plain scoring up to rounding.",
    )
    # openai-compatible servers
    base_url: str | None = Field(None, description="e.g. http://127.0.0.1:8000/v1")
    served_model: str | None = Field(None, description="Model name the server knows; default: `model`.")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key.")
    max_concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(30.0, gt=0, description="openai: seconds per connect or read of one attempt.")
    deadline_s: float = Field(
        60.0, gt=0, description="openai: seconds one item may take over all its attempts before it fails."
    )
    max_retries: int = Field(5, ge=0)
    top_logprobs: int = Field(20, ge=1, le=20)
    exact_choice_logprobs: bool = Field(
        True,
        description="openai: when `model` names the served model's local folder, ask for the choices' "
        "log-probabilities by token id (vLLM's `logprob_token_ids`) instead of reading them from the "
        "top-k; off for servers that refuse fields they do not know.",
    )

    @field_validator("base_url")
    @classmethod
    def _no_credentials(cls, v: str | None) -> str | None:
        if v is not None and credentials_in(v):
            raise ValueError(
                "must not carry credentials (user:password@ or a secret query value): put the key in an "
                "environment variable and name it in api_key_env"
            )
        return v

    def on_cuda(self) -> bool:
        """Whether an in-process model of this spec runs on a GPU: its device, else whether one is there."""
        if self.device:
            return self.device.startswith("cuda")
        import torch

        return torch.cuda.is_available()


def item_seed(seed: int, conversation: Conversation) -> int:
    """Per-item sampling seed from the item's content, not its position: the same prompt gets the same seed
    whichever batch or shard it lands in, so a resumed stage samples what an uninterrupted one would."""
    text = json.dumps(conversation, sort_keys=True, ensure_ascii=False)
    return int(hashlib.sha256(f"{seed}\n{text}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


@dataclass
class CallStats:
    """Counters for cost accounting and for tests that count model calls."""

    generate_calls: int = 0
    generated_sequences: int = 0
    generated_tokens: int = 0
    prompt_tokens: int = 0
    scoring_calls: int = 0
    scored_prompts: int = 0
    retries: int = 0
    # Choices a server's top-k logprobs did not list (they got the floor; see backends.choices).
    missing_choices: int = 0
    # Prompt tokens not recomputed because their prefix was shared (transformers `share_prefixes`).
    shared_prefix_tokens: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def snapshot(self) -> CallStats:
        return replace(self)

    def delta(self, before: CallStats) -> CallStats:
        """What was counted since `before` (a `snapshot()` of these counters)."""
        return CallStats(**{f.name: getattr(self, f.name) - getattr(before, f.name) for f in fields(self)})

    def __add__(self, other: CallStats) -> CallStats:
        return CallStats(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})


class Backend(ABC):
    """A model behind one interface. Implementations batch internally and update `stats`."""

    def __init__(self) -> None:
        self.stats = CallStats()

    @property
    @abstractmethod
    def identity(self) -> str:
        """Model name plus a revision/content hash: part of every cache key and MLflow param."""

    @abstractmethod
    def generate(
        self, conversations: Sequence[Conversation], n: int = 1, sampling: Sampling | None = None
    ) -> list[list[str]]:
        """n sampled replies per conversation (chat template applied)."""

    @abstractmethod
    def choice_probabilities(
        self, conversations: Sequence[Conversation], choices: Sequence[str]
    ) -> list[dict[str, float]]:
        """Next-token distribution after the chat prompt, restricted to `choices` and renormalised."""

    def count_tokens(self, texts: Sequence[str]) -> list[int] | None:
        """Tokens per text in this model's tokenizer (`self.tokenizer`, a Hugging Face tokenizer; no special
        tokens, no chat template); None where the backend has no tokenizer at hand (a server), so callers
        fall back to another unit."""
        tokenizer, texts = getattr(self, "tokenizer", None), list(texts)
        if tokenizer is None:
            return None
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (servers' HTTP clients, GPU memory)."""
