"""A real Label Studio server on 127.0.0.1 for the session: built, started, awaited, torn down.

Use it from a test module with `from tests.label_studio_fixture import label_studio  # noqa: F401`.

* The server runs from its own venv, .venvs/label-studio; when that is missing (no stamp file) the fixture
  runs scripts/label_studio_venv.sh first (about a minute with a warm pip cache, ~1 GB).
* Each session gets a fresh data directory (SQLite), a free port, and a random user and legacy API token.
* Readiness: /health answers and the token authenticates. The wait is bounded by LABEL_STUDIO_READY_TIMEOUT
  (seconds, default 240); a server that exits or misses the deadline fails the fixture with its log tail.
* LABEL_STUDIO_TESTS=skip skips these tests (for machines without the venv and without PyPI access);
  anything else, including unset, runs them.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from alignment_dagster.core.settings import PROJECT_ROOT
from tests.conftest import report
from tests.processes import stop_session

VENV = PROJECT_ROOT / ".venvs" / "label-studio"
BUILD_SCRIPT = PROJECT_ROOT / "scripts" / "label_studio_venv.sh"
TOKEN_ENV = "ALIGNMENT_TEST_LABEL_STUDIO_TOKEN"


@dataclass(frozen=True)
class LabelStudioServer:
    url: str
    username: str
    token_env: str  # the environment variable holding the token (set for the session)
    log_path: Path
    ready_seconds: float
    venv_build_seconds: float | None  # None when the venv was already there

    @property
    def token(self) -> str:
        return os.environ[self.token_env]

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_venv() -> float | None:
    """Build the Label Studio venv if its stamp is missing; returns the build time, None if it was there."""
    if list(VENV.glob(".installed-label-studio-*")) and (VENV / "bin" / "label-studio").exists():
        return None
    start = time.monotonic()
    proc = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        out = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        pytest.fail(f"{BUILD_SCRIPT.name} failed (exit {proc.returncode}):\n{out}", pytrace=False)
    return time.monotonic() - start


@pytest.fixture(scope="session")
def label_studio(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[LabelStudioServer]:
    if os.environ.get("LABEL_STUDIO_TESTS") == "skip":
        pytest.skip("LABEL_STUDIO_TESTS=skip")
    build_seconds = ensure_venv()
    data_dir = tmp_path_factory.mktemp("label-studio")
    log_path = data_dir / "server.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    username = f"tester-{secrets.token_hex(4)}@example.com"
    token = secrets.token_hex(20)
    os.environ[TOKEN_ENV] = token
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir / "data"),
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "PYTHONUNBUFFERED": "1",
    }
    timeout = float(os.environ.get("LABEL_STUDIO_READY_TIMEOUT", "240"))
    start = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                str(VENV / "bin" / "label-studio"),
                "start",
                "--no-browser",
                # --internal-host is the address it binds (default 0.0.0.0); --host is its URL for links.
                "--internal-host",
                "127.0.0.1",
                "--host",
                url,
                "--port",
                str(port),
                "--username",
                username,
                "--password",
                secrets.token_hex(12),
                "--user-token",
                token,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=data_dir,
            start_new_session=True,
        )
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"Label Studio exited with code {proc.returncode} before it was ready; log tail:\n"
                    f"{tail(log_path)}",
                    pytrace=False,
                )
            if time.monotonic() - start > timeout:
                pytest.fail(
                    f"Label Studio was not ready at {url} within {timeout:.0f}s "
                    f"(LABEL_STUDIO_READY_TIMEOUT); log tail:\n{tail(log_path)}",
                    pytrace=False,
                )
            try:
                r = httpx.get(
                    f"{url}/api/current-user/whoami", headers={"Authorization": f"Token {token}"}, timeout=5
                )
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        ready = time.monotonic() - start
        report(
            request,
            f"label-studio: {f'venv built in {build_seconds:.0f}s, ' if build_seconds else ''}"
            f"server ready in {ready:.1f}s at {url}",
        )
        yield LabelStudioServer(url, username, TOKEN_ENV, log_path, ready, build_seconds)
    finally:
        stop_session(proc, grace_s=20)
        os.environ.pop(TOKEN_ENV, None)
