"""Generation throughput: transformers in-process vs a `vllm serve` (CPU build) on the same prompts and model.

    .venv/bin/python benchmarks/generation.py [--prompts 32] [--max-new-tokens 64]

Starts vLLM's OpenAI server from .venvs/vllm (make vllm-venv) on 127.0.0.1, runs both backends on the
same prompts with the same sampling settings, and prints tokens/s side by side and their ratio.
Generated tokens are counted by each backend (transformers: non-pad tokens; server: usage.completion_tokens).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alignment_dagster.backends import BackendSpec, Sampling, make_backend  # noqa: E402
from alignment_dagster.embedded import embedded_model_path  # noqa: E402
from alignment_dagster.prompts import STARTER_SOURCES, build_prompt_pool  # noqa: E402


def start_server(port: int) -> subprocess.Popen:
    py = REPO / ".venvs" / "vllm" / "bin" / "python"
    if not py.exists():
        raise SystemExit("run `make vllm-venv` first")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_LOGGING_LEVEL": "WARNING"}
    proc = subprocess.Popen([str(py), "-m", "vllm.entrypoints.openai.api_server", "--model", str(embedded_model_path()),
                             "--served-model-name", "smollm2", "--host", "127.0.0.1", "--port", str(port),
                             "--max-model-len", "2048", "--dtype", "float32"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 600
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(1)
    proc.kill()
    raise SystemExit("vllm serve did not become ready")


def run(backend, convs, sampling) -> tuple[float, int]:
    backend.generate(convs[:2], n=1, sampling=sampling)  # warm-up
    before = backend.stats.generated_tokens
    t0 = time.perf_counter()
    backend.generate(convs, n=1, sampling=sampling)
    return time.perf_counter() - t0, backend.stats.generated_tokens - before


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    pool = build_prompt_pool(list(STARTER_SOURCES), lambda p: Path(p).read_bytes()).prompts
    prompts = pool[pool["category"] == "helpful"]["prompt"].head(args.prompts).tolist()
    convs = [[{"role": "user", "content": p}] for p in prompts]
    # Greedy, fixed length budget: both engines do the same work per prompt.
    sampling = Sampling(temperature=0.0, max_new_tokens=args.max_new_tokens)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = start_server(port)
    try:
        local = make_backend(BackendSpec(batch_size=args.batch_size))
        remote = make_backend(BackendSpec(kind="openai", base_url=f"http://127.0.0.1:{port}/v1",
                                          served_model="smollm2", max_concurrency=args.batch_size))
        t_local, n_local = run(local, convs, sampling)
        t_remote, n_remote = run(remote, convs, sampling)
    finally:
        server.terminate()
        server.wait(timeout=60)
    rows = [("transformers (in-process)", t_local, n_local), ("vllm serve (CPU) via openai backend", t_remote, n_remote)]
    print(f"{len(convs)} prompts, greedy, max_new_tokens={args.max_new_tokens}, SmolLM2-135M-Instruct fp32, {os.cpu_count()} CPU cores")
    print(f"{'backend':<38} {'seconds':>8} {'tokens':>7} {'tokens/s':>9}")
    for name, t, n in rows:
        print(f"{name:<38} {t:8.1f} {n:7d} {n / t:9.1f}")
    print(f"ratio vllm/transformers tokens/s: {(n_remote / t_remote) / (n_local / t_local):.2f}x")


if __name__ == "__main__":
    main()
