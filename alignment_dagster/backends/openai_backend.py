"""Backend for any OpenAI-compatible server (`vllm serve`, SGLang, TGI, hosted APIs).

Requests run concurrently (bounded by a semaphore) and each retries with exponential backoff and full
jitter on 429, 5xx, timeouts and connection errors (a `Retry-After` header is honoured, capped), within
`deadline_s` per item (60 s by default: a server that stops answering fails the item then, not after
every retry's full timeout). A response is read up to 64 MiB, an error body up to 4 KiB, of which a short
redacted excerpt goes into the error (a gateway echoing the request headers never leaks the key). Each
result is stored at its item's index, so an item is answered exactly once however many attempts it took.
When an item still fails after its retries, no new requests are started, the ones in flight finish, and a
`BackendRequestError` names the endpoint and the item and carries the completed results (`.partial`);
long stages (judging, sampling) call the backend per shard and cache each finished shard first
(`shard_cache.ShardCache`), so a failure loses only the shard in flight. The API key is read from the
environment variable the spec names and never appears in identity, repr, errors or logs (it is registered
with `core.redaction`). A base URL with credentials in it is refused by `BackendSpec`: httpx would send
them as Basic auth instead of the key.

`choice_probabilities` asks the chat completions endpoint for one token with `logprobs=true`. When `model`
names the served model's local folder (so its tokenizer is at hand), it asks vLLM for the choices' first
tokens by id (`logprob_token_ids`, returned as `token_id:<id>` entries): their exact log-probabilities, at any
rank. Otherwise, or from servers that answer without those entries, it reads `top_logprobs=20`: a choice
missing from that top list gets the smallest listed log-probability (see
`backends.choices.restrict_top_logprobs`), and `stats.missing_choices` counts how often that happened.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tqdm.auto import tqdm

from alignment_dagster.backends.base import Backend, BackendSpec, Conversation, Sampling, item_seed
from alignment_dagster.backends.choices import (
    first_token_ids,
    generation_prefix,
    renormalise,
    restrict_top_logprobs,
)
from alignment_dagster.core.redaction import redact_text, redact_url, register_secret
from alignment_dagster.core.remote import MAX_ERROR_BYTES, ResponseTooLarge, aread_body, error_excerpt
from alignment_dagster.core.settings import looks_like_env_name

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 20.0


class BackendRequestError(RuntimeError):
    """A request failed after all retries. `partial[i]` is item i's response when it completed, else None."""

    def __init__(self, message: str, partial: list[Any] | None = None):
        super().__init__(message)
        self.partial = partial or []


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return min(float(resp.headers["retry-after"]), BACKOFF_MAX_S)
    except (KeyError, ValueError):
        return None


@dataclass
class _Attempt:
    status: int
    answer: dict | None
    why: str = ""
    retry_after: float | None = None


class OpenAIBackend(Backend):
    def __init__(self, spec: BackendSpec):
        super().__init__()
        if not spec.base_url:
            raise ValueError("the openai backend needs base_url (e.g. http://127.0.0.1:8000/v1)")
        self.spec = spec
        self.base_url = spec.base_url.rstrip("/")
        self.endpoint = f"{self.base_url}/chat/completions"
        self.model = spec.served_model or spec.model
        if not self.model:
            raise ValueError("the openai backend needs `model` or `served_model`")
        self._api_key_env = spec.api_key_env
        self._choice_ids: dict[tuple[str, ...], list[int] | None] = {}

    def __repr__(self) -> str:
        return f"OpenAIBackend(base_url={redact_url(self.base_url)!r}, model={self.model!r})"

    @property
    def identity(self) -> str:
        # A server hides its weights; the served name and the endpoint are what identifies them. The identity
        # is recorded (MLflow, metadata, cache paths), so credentials in the URL are not part of it.
        return f"openai:{self.model}@{redact_url(self.base_url)}"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._api_key_env:
            key = os.environ.get(self._api_key_env)
            if not key and looks_like_env_name(self._api_key_env):
                raise BackendRequestError(f"environment variable {self._api_key_env} (API key) is not set")
            if not key:
                raise BackendRequestError(
                    "api_key_env must name the environment variable that holds the API key; no "
                    "variable of that name is set, and the name is not shown as it does not look "
                    "like one (upper-case letters, digits, '_'): it may be the key itself"
                )
            register_secret(key)
            headers["Authorization"] = f"Bearer {key}"
        return headers

    async def _attempt(self, client: httpx.AsyncClient, payload: dict) -> _Attempt:
        """One request, its body read bounded."""
        async with client.stream("POST", self.endpoint, json=payload) as resp:
            if resp.status_code == 200:
                return _Attempt(200, json.loads(await aread_body(resp)))
            body = await aread_body(resp, MAX_ERROR_BYTES, truncate=True)
            why = f"HTTP {resp.status_code}: {error_excerpt(body)}"
            return _Attempt(resp.status_code, None, why, _retry_after(resp))

    async def _post(
        self,
        client: httpx.AsyncClient,
        sem: asyncio.Semaphore,
        abort: asyncio.Event,
        payload: dict,
        item: int,
    ) -> dict | None:
        """The response for one item, None if aborted before sending, or raises after the last retry or once
        the item's deadline has passed."""
        last = ""
        deadline = None  # set when the item is first sent: waiting for a slot is not the server's time
        for attempt in range(self.spec.max_retries + 1):
            wait: float | None = None
            async with sem:
                if abort.is_set():
                    return None
                deadline = deadline or time.monotonic() + self.spec.deadline_s
                try:
                    got = await asyncio.wait_for(
                        self._attempt(client, payload), max(deadline - time.monotonic(), 0.001)
                    )
                    if got.answer is not None:
                        return got.answer
                    last, wait = got.why, got.retry_after
                    if got.status not in RETRY_STATUS:
                        break
                except (httpx.TimeoutException, httpx.TransportError, TimeoutError) as e:
                    last = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                except (ResponseTooLarge, ValueError) as e:  # over the limit, or not JSON
                    last = f"unusable answer ({e})"
                    break
            if attempt < self.spec.max_retries:
                if wait is None:  # full jitter: concurrent clients hit by the same fault spread out
                    wait = random.uniform(0, min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**attempt))
                if time.monotonic() + wait >= deadline:
                    last += f"; deadline of {self.spec.deadline_s:g} s reached"
                    break
                self.stats.retries += 1
                await asyncio.sleep(wait)  # outside the semaphore: a backing-off item frees its slot
        raise BackendRequestError(
            redact_text(f"{self.endpoint}: item {item} failed after {attempt + 1} attempt(s) ({last})")
        )

    async def _run(self, payloads: list[dict], desc: str) -> list[dict]:
        sem = asyncio.Semaphore(self.spec.max_concurrency)
        abort = asyncio.Event()
        timeout = httpx.Timeout(self.spec.timeout_s)
        limits = httpx.Limits(max_connections=self.spec.max_concurrency)
        results: list[dict | None] = [None] * len(payloads)
        errors: list[BackendRequestError] = []
        bar = tqdm(total=len(payloads), desc=desc, unit="req", disable=len(payloads) < 16)

        async def one(client: httpx.AsyncClient, i: int) -> None:
            try:
                results[i] = await self._post(client, sem, abort, payloads[i], i)
            except BackendRequestError as e:
                errors.append(e)
                abort.set()  # start nothing new; requests in flight still finish and are kept
                return
            bar.update(1)

        try:
            async with httpx.AsyncClient(timeout=timeout, limits=limits, headers=self._headers()) as client:
                await asyncio.gather(*(one(client, i) for i in range(len(payloads))))
        finally:
            bar.close()
        if errors:
            done = sum(r is not None for r in results)
            raise BackendRequestError(
                f"{errors[0]}; {done}/{len(payloads)} items completed (see .partial)", partial=results
            )
        return results  # type: ignore[return-value]

    def _execute(self, payloads: list[dict], desc: str) -> list[dict]:
        t0 = time.perf_counter()
        try:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return asyncio.run(self._run(payloads, desc))
            # Called from inside an event loop (a notebook, an async caller): run ours on a worker thread.
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                return pool.submit(asyncio.run, self._run(payloads, desc)).result()
        finally:
            self.stats.seconds += time.perf_counter() - t0

    def choice_probabilities(
        self, conversations: Sequence[Conversation], choices: Sequence[str]
    ) -> list[dict[str, float]]:
        if len(set(choices)) != len(choices) or not all(choices):
            raise ValueError(f"choices must be distinct non-empty strings, got {list(choices)}")
        ids = self.choice_token_ids(choices)
        ask = {"logprob_token_ids": ids, "return_tokens_as_token_ids": True} if ids else {}
        payloads = [
            {
                "model": self.model,
                "messages": list(c),
                "max_tokens": 1,
                "temperature": 0.0,
                "logprobs": True,
                "top_logprobs": self.spec.top_logprobs,
                **ask,
            }
            for c in conversations
        ]
        out = []
        for resp in self._execute(payloads, "scoring"):
            top_list = resp["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            by_id = {
                int(e["token"].removeprefix("token_id:")): e["logprob"]
                for e in top_list
                if e["token"].startswith("token_id:")
            }
            if ids and by_id:  # ids asked and ids answered (a server that ignored the ask: its top-k, by id)
                logps, missing = restrict_top_logprobs(by_id, ids)
            else:
                top: dict[str, float] = {}
                for entry in top_list:  # distinct ids can decode to the same text; keep the most likely
                    top[entry["token"]] = max(top.get(entry["token"], -float("inf")), entry["logprob"])
                logps, missing = restrict_top_logprobs(top, first_token_texts(top, choices))
            self.stats.missing_choices += missing
            out.append(dict(zip(choices, renormalise(logps), strict=False)))
            usage = resp.get("usage") or {}
            self.stats.prompt_tokens += int(usage.get("prompt_tokens", 0))
        self.stats.scoring_calls += len(payloads)
        self.stats.scored_prompts += len(payloads)
        return out

    def choice_token_ids(self, choices: Sequence[str]) -> list[int] | None:
        """The choices' first token ids in the served model's tokenizer, when `model` is its local folder
        (and `exact_choice_logprobs` is on); None: read the top-k by text instead."""
        key = tuple(choices)
        if key not in self._choice_ids:
            folder = Path(self.spec.model) if self.spec.model else None
            self._choice_ids[key] = None
            if (
                self.spec.exact_choice_logprobs
                and folder is not None
                and (folder / "tokenizer_config.json").is_file()
            ):
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(folder)
                self._choice_ids[key] = first_token_ids(tokenizer, choices, generation_prefix(tokenizer))
        return self._choice_ids[key]

    def generate(
        self, conversations: Sequence[Conversation], n: int = 1, sampling: Sampling | None = None
    ) -> list[list[str]]:
        sampling = sampling or Sampling()
        payloads = [
            {
                "model": self.model,
                "messages": list(c),
                "n": n,
                "temperature": sampling.temperature,
                "top_p": sampling.top_p,
                "max_tokens": sampling.max_new_tokens,
                "seed": item_seed(sampling.seed, c),
            }
            for c in conversations
        ]
        out = []
        for resp in self._execute(payloads, "generating"):
            out.append([(ch["message"]["content"] or "").strip() for ch in resp["choices"]])
            usage = resp.get("usage") or {}
            self.stats.prompt_tokens += int(usage.get("prompt_tokens", 0))
            self.stats.generated_tokens += int(usage.get("completion_tokens", 0))
        self.stats.generate_calls += len(payloads)
        self.stats.generated_sequences += len(payloads) * n
        return out


def first_token_texts(top: dict[str, float], choices: Sequence[str]) -> list[str]:
    """The token text standing for each choice in a server's top list: the choice itself when listed, else
    the longest listed token it starts with (a multi-token choice's first token), else the choice (missing).
    Two choices resolving to the same listed token cannot be told apart by one next-token distribution."""
    picked = []
    for c in choices:
        if c in top:
            picked.append(c)
            continue
        prefixes = [t for t in top if t and c.startswith(t)]
        picked.append(max(prefixes, key=len) if prefixes else c)
    if len(set(picked)) != len(picked):
        raise ValueError(
            f"choices {list(choices)} share a first token ({picked}); use choices that start differently"
        )
    return picked
