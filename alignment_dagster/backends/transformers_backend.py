"""In-process transformers backend (CPU or GPU): batched, left-padded, bf16 on GPU."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from functools import cached_property

from tqdm.auto import tqdm

from alignment_dagster.backends.adapter import adapter_identity, apply_adapter, weights_path
from alignment_dagster.backends.base import Backend, BackendSpec, Conversation, Sampling
from alignment_dagster.backends.choices import first_token_ids, generation_prefix
from alignment_dagster.backends.identity import model_identity
from alignment_dagster.backends.prefix import (
    PackedRow,
    attention_cost,
    choice_probs_packed,
    prefix_rows,
    tokenize_shared,
)

__all__ = ["TransformersBackend", "first_token_ids"]

# Prompts prepared per chunk for shared-prefix scoring (2,048 = 256 judge pairs of 4 principles x 2 orders):
# big enough that a pair split by a chunk boundary costs little, small enough that the GPU starts early.
_PREP_CHUNK = 2048


class TransformersBackend(Backend):
    def __init__(self, spec: BackendSpec):
        super().__init__()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = model_identity("transformers", spec.model)[0]
        self.spec = spec
        self.device = spec.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if spec.cpu_threads is not None:
            # Measured on 2 shared cores at load ~3: a 16x39-token forward took 1.7 s on 1 thread, 5-11 s on
            # 2.
            torch.set_num_threads(spec.cpu_threads)
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(
            spec.dtype
        )
        if dtype is None:  # auto: bf16 on GPU, fp32 on CPU (bf16 matmuls are slow on most CPUs)
            dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(
            path
        )  # training never changes it: base's, whatever the adapter
        self.tokenizer.padding_side = "left"  # last position = next token for every row of a batch
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(weights_path(path, spec.adapter), dtype=dtype)
        self.model = apply_adapter(self.model, spec.adapter).to(self.device).eval()
        self._identity = adapter_identity(
            model_identity("transformers", spec.model, self.model.config)[1], spec.adapter
        )
        self._prefix = generation_prefix(self.tokenizer)

    @property
    def identity(self) -> str:
        return self._identity

    @cached_property
    def _attention_cost(
        self,
    ) -> float:  # on first shared-prefix scoring: a backend that only generates skips it
        return attention_cost(self.model)

    def _encode(self, conversations: Sequence[Conversation]):
        texts = [
            self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
            for c in conversations
        ]
        return self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
            self.device
        )

    def _batches(self, items: Sequence, desc: str):
        # Sorting by length keeps padding small; results are put back in input order by the callers.
        order = sorted(range(len(items)), key=lambda i: len(json.dumps(items[i])))
        bs = self.spec.batch_size
        bar = tqdm(total=len(items), desc=desc, disable=len(items) <= bs, unit="prompt")
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            yield idx
            bar.update(len(idx))
        bar.close()

    def choice_probabilities(
        self, conversations: Sequence[Conversation], choices: Sequence[str]
    ) -> list[dict[str, float]]:
        t0 = time.perf_counter()
        ids = first_token_ids(self.tokenizer, choices, self._prefix)
        if self.spec.share_prefixes:
            out = self._choice_probabilities_shared(conversations, choices, ids)
        else:
            out = self._choice_probabilities_plain(conversations, choices, ids)
        self.stats.seconds += time.perf_counter() - t0
        return out

    def _choice_probabilities_plain(self, conversations, choices, ids) -> list[dict[str, float]]:
        import torch

        out: list[dict[str, float] | None] = [None] * len(conversations)
        for idx in self._batches(conversations, "scoring"):
            enc = self._encode([conversations[i] for i in idx])
            # Left padding shifts positions; explicit position ids make a padded row score like an unpadded
            # one.
            position_ids = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                logits = (
                    self.model(**enc, position_ids=position_ids, logits_to_keep=1).logits[:, -1, :].float()
                )
            probs = torch.softmax(logits[:, ids], dim=-1).cpu().tolist()
            for i, p in zip(idx, probs, strict=False):
                out[i] = dict(zip(choices, p, strict=False))
            self.stats.scoring_calls += 1
            self.stats.scored_prompts += len(idx)
            self.stats.prompt_tokens += int(enc["attention_mask"].sum())
        return out  # type: ignore[return-value]

    def _choice_probabilities_shared(self, conversations, choices, ids) -> list[dict[str, float]]:
        out: list[dict[str, float] | None] = [None] * len(conversations)
        bar = tqdm(
            total=len(conversations),
            desc="scoring",
            disable=len(conversations) <= self.spec.batch_size,
            unit="prompt",
        )
        # (prompts, probabilities on the device): read back once at the end, so the GPU never waits
        scored = []
        # Prepared a chunk at a time: batches are queued without waiting for the GPU (pinned copies, one
        # read-back at the end), so while a chunk's batches run there, the next chunk's chat template,
        # tokenisation and layout can run here. Callers pass prompts pair by pair, so a chunk boundary
        # splits at most one pair's prefix tree.
        chunk = max(_PREP_CHUNK, self.spec.batch_size)
        for start in range(0, len(conversations), chunk):
            part = conversations[start : start + chunk]
            texts = [
                self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
                for c in part
            ]
            token_ids, _ = tokenize_shared(texts, self._token_ids)
            rows = prefix_rows(
                token_ids,
                sorted(range(len(texts)), key=texts.__getitem__),
                attention_cost=self._attention_cost,
            )
            for batch in self._row_batches(rows):
                prompts, probs = choice_probs_packed(
                    self.model, batch, ids, self.tokenizer.pad_token_id, self.device
                )
                scored.append(([start + p for p in prompts], probs))
                n_prompts = len(prompts)
                total = sum(len(token_ids[p]) for p in prompts)
                self.stats.scoring_calls += 1
                self.stats.scored_prompts += n_prompts
                self.stats.prompt_tokens += total
                self.stats.shared_prefix_tokens += total - sum(len(r.tokens) for r in batch)
                bar.update(
                    n_prompts
                )  # on a GPU: queued, not finished; the read-back below waits for the rest
        bar.close()
        for prompts, probs in scored:
            for i, p in zip(prompts, probs.cpu().tolist(), strict=False):
                out[i] = dict(zip(choices, p, strict=False))
        return out  # type: ignore[return-value]

    def _token_ids(self, texts: list[str]) -> list[list[int]]:
        # The fast tokenizer's Rust batch call directly: the Python wrapper's conversion of thousands of long
        # encodings cost more than the tokenisation itself (profiled on an H100 judge run).
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            return self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        backend.no_padding()  # a padded call (generate) leaves padding switched on in the Rust tokenizer
        backend.no_truncation()
        encode = getattr(
            backend, "encode_batch_fast", backend.encode_batch
        )  # _fast: no offsets (tokenizers>=0.20)
        return [e.ids for e in encode(texts, add_special_tokens=False)]

    def _row_batches(self, rows: list[PackedRow], max_padding: float = 0.1):
        """Batches of rows holding at most `batch_size` prompts (a row bigger than that goes alone), sorted
        by length; a batch also ends where the next row would make padding exceed `max_padding` of its
        tokens (row lengths have a long tail: a pair with long replies is long in both orders)."""
        batch: list[PackedRow] = []
        prompts = tokens = 0
        for row in sorted(rows, key=lambda r: len(r.tokens)):
            n = len(row.tokens)
            if batch and (
                prompts + row.prompts > self.spec.batch_size
                or (len(batch) + 1) * n > (1 + max_padding) * (tokens + n)
            ):
                yield batch
                batch, prompts, tokens = [], 0, 0
            batch.append(row)
            prompts += row.prompts
            tokens += n
        if batch:
            yield batch

    def generate(
        self, conversations: Sequence[Conversation], n: int = 1, sampling: Sampling | None = None
    ) -> list[list[str]]:
        import torch

        sampling = sampling or Sampling()
        t0 = time.perf_counter()
        out: list[list[str]] = [[] for _ in conversations]
        torch.manual_seed(sampling.seed)
        for idx in self._batches(conversations, "generating"):
            enc = self._encode([conversations[i] for i in idx])
            do_sample = sampling.temperature > 0
            with torch.inference_mode():
                gen = self.model.generate(
                    **enc,
                    do_sample=do_sample,
                    temperature=sampling.temperature if do_sample else None,
                    top_p=sampling.top_p if do_sample else None,
                    top_k=None,
                    max_new_tokens=sampling.max_new_tokens,
                    num_return_sequences=n,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new = gen[:, enc["input_ids"].shape[1] :]
            texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
            for j, i in enumerate(idx):
                out[i] = [t.strip() for t in texts[j * n : (j + 1) * n]]
            self.stats.generate_calls += 1
            self.stats.generated_sequences += len(idx) * n
            self.stats.generated_tokens += int((new != self.tokenizer.pad_token_id).sum())
            self.stats.prompt_tokens += int(enc["attention_mask"].sum())
        self.stats.seconds += time.perf_counter() - t0
        return out
