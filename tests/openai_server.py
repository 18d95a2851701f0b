"""A real OpenAI-compatible chat-completions server on loopback, answered by the embedded SmolLM2 through the
transformers backend: next-token top log-probabilities for judging, sampled replies for generation. It wants
`Authorization: Bearer <api_key>` (401 otherwise, Basic auth included), so a test sees that a client sent
the key from its variable. Far lighter than `vllm serve` for tests that need an HTTP model server.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from alignment_dagster.backends import BackendSpec, Sampling, make_backend


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_state: OpenAICompatibleServer

    def log_message(self, *args) -> None:  # quiet
        pass

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        state = self.server_state
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        if self.headers.get("Authorization") != f"Bearer {state.api_key}":
            state.refused += 1
            self._answer(401, {"error": {"message": "missing or wrong API key"}})
            return
        if self.path != "/v1/chat/completions":
            self._answer(404, {"error": {"message": "not found"}})
            return
        state.authorized += 1
        self._answer(200, state.complete(request))


class OpenAICompatibleServer:
    """`url` is the base URL (`.../v1`); `authorized` / `refused` count requests by their key."""

    def __init__(self, api_key: str, served_model: str = "smollm2"):
        self.api_key = api_key
        self.served_model = served_model
        self.backend = make_backend(BackendSpec(kind="transformers", batch_size=4))
        self.lock = threading.Lock()  # one forward pass at a time
        self.authorized = 0
        self.refused = 0
        handler = type("Handler", (_Handler,), {"server_state": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def start(self) -> OpenAICompatibleServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _top_logprobs(self, messages: list[dict], k: int) -> tuple[list[dict], int]:
        import torch

        tok, model = self.backend.tokenizer, self.backend.model
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            logits = model(**ids).logits[0, -1].float()
        values, indices = torch.log_softmax(logits, -1).topk(k)
        top = [
            {"token": tok.decode([int(i)]), "logprob": float(v)} for v, i in zip(values, indices, strict=True)
        ]
        return top, int(ids["input_ids"].shape[1])

    def complete(self, request: dict) -> dict:
        messages = request["messages"]
        with self.lock:
            if request.get("logprobs"):
                top, n_prompt = self._top_logprobs(messages, int(request.get("top_logprobs") or 1))
                content = [{"token": top[0]["token"], "logprob": top[0]["logprob"], "top_logprobs": top}]
                choices = [{"message": {"content": top[0]["token"]}, "logprobs": {"content": content}}]
                return {"choices": choices, "usage": {"prompt_tokens": n_prompt, "completion_tokens": 1}}
            sampling = Sampling(
                temperature=float(request.get("temperature", 0.8)),
                top_p=float(request.get("top_p", 0.95)),
                max_new_tokens=int(request.get("max_tokens") or 32),
                seed=int(request.get("seed") or 0),
            )
            replies = self.backend.generate([messages], n=int(request.get("n") or 1), sampling=sampling)[0]
        return {"choices": [{"message": {"content": r}} for r in replies], "usage": {}}
