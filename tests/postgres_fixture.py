"""A real PostgreSQL server from Debian's package on 127.0.0.1, in a temporary folder, for one test session.

Use it from a test module with `from tests.postgres_fixture import postgres  # noqa: F401`.

* The server binaries come from Debian's `postgresql` package (`make postgres` installs it; `make test` runs
  that first). `initdb` refuses to run as root, so as root (CI) the cluster belongs to the `postgres` user
  the package creates; otherwise to the current user.
* TCP on 127.0.0.1 only, a free port, password (SCRAM) authentication for the test role over TCP; the
  superuser reaches it only through a Unix socket in the temporary folder (set-up and `pg_dump`).
* Each session gets a fresh cluster, a random role password, and databases created on request.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import report


@dataclass(frozen=True)
class PostgresServer:
    bindir: Path
    socket_dir: Path
    port: int
    role: str
    password: str
    os_user: str | None  # the user the server runs as when it is not this process's
    ready_seconds: float

    def url(self, db: str) -> str:
        """A URL without the password (clients take it from PGPASSWORD)."""
        return f"postgresql://{self.role}@127.0.0.1:{self.port}/{db}"

    def admin(self, tool: str, *args: str) -> str:
        """Run a client tool (`psql`, `pg_dump`, ...) as the superuser over the Unix socket; its stdout."""
        argv = [str(self.bindir / tool), "-h", str(self.socket_dir), "-p", str(self.port), "-U", "postgres"]
        proc = subprocess.run(
            [*argv, *args], capture_output=True, text=True, timeout=120, user=self.os_user, env=_clean_env()
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed: {proc.stderr[-2000:]}")
        return proc.stdout

    def create_database(self, name: str) -> str:
        self.admin("psql", "-v", "ON_ERROR_STOP=1", "-c", f'CREATE DATABASE "{name}" OWNER "{self.role}"')
        return self.url(name)


def _clean_env() -> dict[str, str]:
    # The server and admin tools get no PG* settings of the caller (a PGPASSWORD meant for the test role).
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def find_bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.fail(
            "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb): run `make postgres` "
            "(apt-get install -y postgresql)",
            pytrace=False,
        )
    return Path(found[-1]).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as(user: str | None, argv: list[str], timeout: float = 120) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, user=user, env=_clean_env())
    if proc.returncode != 0:
        raise RuntimeError(
            f"{Path(argv[0]).name} failed ({proc.returncode}): {(proc.stdout + proc.stderr)[-3000:]}"
        )


@pytest.fixture(scope="session")
def postgres(request: pytest.FixtureRequest) -> Iterator[PostgresServer]:
    bindir = find_bindir()
    os_user = "postgres" if os.geteuid() == 0 else None
    base = Path(tempfile.mkdtemp(prefix="alignment-pg-"))
    data, sock = base / "data", base / "socket"
    sock.mkdir()
    if os_user:
        for path in (base, sock):
            shutil.chown(path, os_user, os_user)
    role, password, port = "alignment", secrets.token_hex(16), free_port()
    start = time.monotonic()
    _as(
        os_user,
        [
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        ],
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {sock} -c fsync=off -c max_connections=200"
    log = base / "server.log"
    try:
        _as(os_user, [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start"])
        server = PostgresServer(bindir, sock, port, role, password, os_user, time.monotonic() - start)
        server.admin("psql", "-v", "ON_ERROR_STOP=1", "-c", f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        report(
            request,
            f"[postgres] {bindir.parent.name} ready on 127.0.0.1:{port} in {server.ready_seconds:.1f}s",
        )
        yield server
    finally:
        subprocess.run(
            [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            timeout=60,
            user=os_user,
            env=_clean_env(),
        )
        shutil.rmtree(base, ignore_errors=True)
