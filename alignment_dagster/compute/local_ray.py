"""A real single-machine Ray cluster for tests, benchmarks and trying `compute: ray` on a laptop: a head
started with `ray start --head` under its own temporary folder, token authentication on, loopback only.

Ray 2.60's local clusters want an auth token: it is generated into a private file named by
`RAY_AUTH_TOKEN_PATH` (not `~/.ray`, so HOME and with it the model cache stay put) and every client of the
cluster (the Dagster process, `ray job`) needs the same two variables, `env`. A per-cluster `--temp-dir`
keeps a killed head's stale session files away from the next one, and the object store is kept small (Ray
would take 30% of memory).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LocalRay:
    address: str  # the dashboard's job-submission address
    env: dict[str, str]  # what a client needs in its environment (auth mode and the token's file)
    temp_dir: Path  # the cluster's session files and logs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray() -> str:
    return str(Path(sys.executable).with_name("ray"))


@contextmanager
def local_ray_cluster(num_cpus: int = 2, object_store_mb: int = 256) -> Iterator[LocalRay]:
    """Start a head on 127.0.0.1 and stop it on exit (`ray stop --force`, then the folder is removed)."""
    # Short path: Ray's socket paths live under the temp dir and Unix sockets allow ~107 characters.
    folder = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    token = folder / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    dashboard = _free_port()
    cmd = [
        _ray(),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={_free_port()}",
        f"--ray-client-server-port={_free_port()}",
        f"--dashboard-agent-listen-port={_free_port()}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        "--include-dashboard=true",
        f"--temp-dir={folder / 't'}",
        f"--num-cpus={num_cpus}",
        f"--object-store-memory={object_store_mb * 1024 * 1024}",
        "--disable-usage-stats",
    ]
    run_env = {**os.environ, **env}
    subprocess.run(cmd, env=run_env, check=True, capture_output=True, text=True, timeout=120)
    try:
        yield LocalRay(f"http://127.0.0.1:{dashboard}", env, folder / "t")
    finally:
        subprocess.run([_ray(), "stop", "--force"], env=run_env, capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)
