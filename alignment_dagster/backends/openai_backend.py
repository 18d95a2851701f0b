"""Backend for any OpenAI-compatible server (`vllm serve`, SGLang, TGI, hosted APIs).

Requests run concurrently (bounded by a semaphore) and each retries with exponential backoff and jitter on
429, 5xx, timeouts and connection errors. Each result is stored at its item's index, so an item is
answered exactly once however many attempts it took. The API key is read from the environment variable
the spec names and never appears in identity, repr, errors or logs.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from collections.abc import Sequence
from typing import Any

import httpx
from tqdm.auto import tqdm

from alignment_dagster.backends.base import Backend, BackendSpec, Conversation, Sampling

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
# Choices missing from the server's top-k logprobs get this log-probability: below anything listed.
MISSING_LOGPROB = -30.0


class BackendRequestError(RuntimeError):
    pass


class OpenAIBackend(Backend):
    def __init__(self, spec: BackendSpec):
        super().__init__()
        if not spec.base_url:
            raise ValueError("the openai backend needs base_url (e.g. http://127.0.0.1:8000/v1)")
        self.spec = spec
        self.base_url = spec.base_url.rstrip("/")
        self.model = spec.served_model or spec.model
        if not self.model:
            raise ValueError("the openai backend needs `model` or `served_model`")
        self._api_key_env = spec.api_key_env

    def __repr__(self) -> str:
        return f"OpenAIBackend(base_url={self.base_url!r}, model={self.model!r})"

    @property
    def identity(self) -> str:
        return f"openai:{self.model}@{self.base_url}"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._api_key_env:
            key = os.environ.get(self._api_key_env)
            if not key:
                raise BackendRequestError(f"environment variable {self._api_key_env} (API key) is not set")
            headers["Authorization"] = f"Bearer {key}"
        return headers

    async def _post(self, client: httpx.AsyncClient, sem: asyncio.Semaphore, payload: dict, item: int) -> dict:
        delay = 0.5
        last: str = ""
        for attempt in range(self.spec.max_retries + 1):
            async with sem:
                try:
                    resp = await client.post(f"{self.base_url}/chat/completions", json=payload)
                    if resp.status_code == 200:
                        return resp.json()
                    last = f"HTTP {resp.status_code}: {resp.text[:200]}"
                    if resp.status_code not in RETRY_STATUS:
                        break
                except (httpx.TimeoutException, httpx.TransportError) as e:
                    last = f"{type(e).__name__}: {e}"
            if attempt < self.spec.max_retries:
                self.stats.retries += 1
                await asyncio.sleep(delay * (0.5 + random.random()))  # full jitter around the backoff
                delay = min(delay * 2, 20.0)
        raise BackendRequestError(
            f"{self.base_url}/chat/completions: item {item} failed after {self.spec.max_retries + 1} attempts ({last})"
        )

    async def _run(self, payloads: list[dict], desc: str) -> list[dict]:
        sem = asyncio.Semaphore(self.spec.max_concurrency)
        timeout = httpx.Timeout(self.spec.timeout_s)
        limits = httpx.Limits(max_connections=self.spec.max_concurrency)
        results: list[dict | None] = [None] * len(payloads)
        bar = tqdm(total=len(payloads), desc=desc, unit="req", disable=len(payloads) < 16)
        async with httpx.AsyncClient(timeout=timeout, limits=limits, headers=self._headers()) as client:

            async def one(i: int) -> None:
                results[i] = await self._post(client, sem, payloads[i], i)
                bar.update(1)

            try:
                await asyncio.gather(*(one(i) for i in range(len(payloads))))
            finally:
                bar.close()
        return results  # type: ignore[return-value]

    def _execute(self, payloads: list[dict], desc: str) -> list[dict]:
        t0 = time.perf_counter()
        try:
            return asyncio.run(self._run(payloads, desc))
        finally:
            self.stats.seconds += time.perf_counter() - t0

    def choice_probabilities(self, conversations: Sequence[Conversation], choices: Sequence[str]) -> list[dict[str, float]]:
        payloads = [
            {"model": self.model, "messages": list(c), "max_tokens": 1, "temperature": 0.0, "logprobs": True,
             "top_logprobs": self.spec.top_logprobs}
            for c in conversations
        ]
        out = []
        for resp in self._execute(payloads, "scoring"):
            top = resp["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            by_token: dict[str, float] = {}
            for entry in top:  # a choice may appear under several spellings; keep the most likely
                tok = entry["token"]
                by_token[tok] = max(by_token.get(tok, -math.inf), entry["logprob"])
            logps = [by_token.get(c, MISSING_LOGPROB) for c in choices]
            m = max(logps)
            exp = [math.exp(x - m) for x in logps]
            total = sum(exp)
            out.append({c: e / total for c, e in zip(choices, exp)})
            usage = resp.get("usage") or {}
            self.stats.prompt_tokens += int(usage.get("prompt_tokens", 0))
        self.stats.scoring_calls += len(payloads)
        self.stats.scored_prompts += len(payloads)
        return out

    def generate(self, conversations: Sequence[Conversation], n: int = 1, sampling: Sampling | None = None) -> list[list[str]]:
        sampling = sampling or Sampling()
        payloads = [
            {"model": self.model, "messages": list(c), "n": n, "temperature": sampling.temperature,
             "top_p": sampling.top_p, "max_tokens": sampling.max_new_tokens, "seed": sampling.seed + i}
            for i, c in enumerate(conversations)
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
