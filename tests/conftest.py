"""Shared fixtures: real services on loopback (moto S3 server), temporary storage roots, Dagster instances."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from dagster import DagsterInstance

from alignment_dagster.core.settings import PROJECT_ROOT, Settings
from alignment_dagster.definitions import build_resources

REPO = PROJECT_ROOT
SHARED_DATA = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-dev.jsonl.gz"
STARTER_CONSTITUTIONS = REPO / "constitutions"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 HTTP endpoint (moto server) on 127.0.0.1, with throwaway credentials."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str, request: pytest.FixtureRequest) -> str:
    """A fresh bucket on the moto server, named after the test."""
    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50].strip("-")
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def constitutions_dir(tmp_path: Path) -> Path:
    """A private copy of the starter constitutions, free to edit."""
    d = tmp_path / "constitutions"
    shutil.copytree(STARTER_CONSTITUTIONS, d)
    return d


@pytest.fixture
def settings(tmp_path: Path, constitutions_dir: Path) -> Settings:
    return Settings.from_env(
        {"ALIGNMENT_ROOT": str(tmp_path / "root"), "ALIGNMENT_CONSTITUTIONS_DIR": str(constitutions_dir)}
    )


@pytest.fixture
def resources(settings: Settings) -> dict[str, object]:
    return build_resources(settings)


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with DagsterInstance.ephemeral() as inst:
        yield inst


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The embedded SmolLM2-135M-Instruct as a safetensors folder (converted once, then cached)."""
    from alignment_dagster.backends.embedded import embedded_model_path

    return Path(embedded_model_path())


def report(request: pytest.FixtureRequest, line: str) -> None:
    """Print past pytest's output capture: timings belong in every CI log."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("\n" + line)


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """http://127.0.0.1:<port> of a socket that accepts connections and never answers (a hung server)."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])  # held open, never read from or written to
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in accepted:
            conn.close()
        server.close()


def write_known_labels(root: Path, n: int = 200) -> Path:
    """known_labels as response_pairs stores it (the first `n` shared HH pairs, split by prompt as the
    pipeline splits them), for tests that start downstream of it."""
    from alignment_dagster.data.pair_pool import KnownSplit, split_imported
    from alignment_dagster.data.pairs import import_pairs

    ps = import_pairs([str(SHARED_DATA)], lambda u: Path(u).read_bytes(), limit=n)
    path = root / "known_labels" / "data.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    split_imported(ps.pairs, ps.labels, KnownSplit())[1].to_parquet(path, index=False)
    return path
