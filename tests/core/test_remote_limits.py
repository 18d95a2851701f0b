"""Remote calls fail within bounds and tell what failed: S3 that stops answering, a dead S3 prefix beside good
local files, a model server that hangs or answers too much, gateways that echo the API key back, URLs with
credentials; and the sensor never hashes a file it will refuse anyway."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from dagster import DagsterInstance, SensorResult, build_sensor_context

from alignment_dagster.backends import BackendSpec, make_backend
from alignment_dagster.backends.openai_backend import BackendRequestError
from alignment_dagster.core.storage import read_uri
from alignment_dagster.core.watched import list_folder
from alignment_dagster.human.label_studio import LabelStudioClient, LabelStudioError
from alignment_dagster.resources.libraries import ConstitutionLibrary
from alignment_dagster.resources.storage_io import BoundedS3Resource
from alignment_dagster.resources.tracking import MLFLOW_HTTP_DEFAULTS, mlflow_worst_case_s
from alignment_dagster.sensors import constitution_sensor
from alignment_dagster.specs.constitution import load_constitution
from tests.backend_fixtures import free_port
from tests.conftest import REPO

KEY = "sk-echoedKey5Hq9Zr2Wm"
HI = [[{"role": "user", "content": "hi"}]]


def test_every_remote_dependency_fails_within_60_s_by_default() -> None:
    s3 = BoundedS3Resource()
    assert (s3.max_attempts, s3.connect_timeout_s, s3.read_timeout_s) == (3, 4.0, 14.0)
    assert s3.worst_case_s() <= 60
    assert mlflow_worst_case_s(MLFLOW_HTTP_DEFAULTS) <= 60
    spec = BackendSpec(kind="openai")
    assert spec.deadline_s == 60 and spec.timeout_s <= spec.deadline_s
    client = LabelStudioClient("http://127.0.0.1:9", token_env="T", environ={"T": "tok"})
    assert client._http.timeout.read == 30 and client._http.timeout.connect == 30  # one call, no retries
    client.close()


def test_an_s3_endpoint_that_stops_answering_fails_fast_with_its_name(silent_endpoint: str) -> None:
    s3 = BoundedS3Resource(
        endpoint_url=silent_endpoint,
        region_name="us-east-1",
        max_attempts=2,
        read_timeout_s=1,
        connect_timeout_s=1,
    )
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    started = time.monotonic()
    with pytest.raises(Exception) as err:
        read_uri("s3://bucket/prompts.jsonl", s3.get_client)
    assert "Read timeout" in str(err.value) and silent_endpoint in str(err.value)
    assert time.monotonic() - started < s3.worst_case_s() + 10  # its own bound, not botocore's 6 x 60 s


def test_a_dead_s3_prefix_does_not_stop_the_local_files(tmp_path: Path) -> None:
    folder = tmp_path / "constitutions"
    folder.mkdir()
    shutil.copy(REPO / "constitutions" / "safety-strict.yaml", folder)
    dead = f"http://127.0.0.1:{free_port()}"
    library = ConstitutionLibrary(
        folder=str(folder),
        s3_uri="s3://team/constitutions",
        s3=BoundedS3Resource(endpoint_url=dead, region_name="us-east-1", max_attempts=1, connect_timeout_s=1),
    )
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    plan = library.plan({"s3://team/constitutions/old.yaml": "etag:1"})
    key = load_constitution(folder / "safety-strict.yaml").partition_key
    assert list(plan.versions) == [key]
    assert len(plan.errors) == 1 and plan.errors[0].startswith("s3://team/constitutions: cannot list (")
    assert plan.cursor["s3://team/constitutions/old.yaml"] == "etag:1"  # not forgotten while unreachable
    with DagsterInstance.ephemeral() as instance:
        with build_sensor_context(instance=instance, resources={"constitution_library": library}) as ctx:
            result = constitution_sensor(ctx)
    assert isinstance(result, SensorResult) and [r.partition_key for r in result.run_requests] == [key]


def test_the_sensor_never_hashes_a_file_over_the_size_limit(tmp_path: Path) -> None:
    folder = tmp_path / "constitutions"
    folder.mkdir()
    shutil.copy(REPO / "constitutions" / "safety-strict.yaml", folder)
    (folder / "huge.yaml").write_bytes(b"name: x\n" + b"#" * (2 * 1024 * 1024))
    files = {Path(f.source).name: f for f in list_folder(folder)}
    assert files["huge.yaml"].fingerprint.startswith("size:")  # stat only: never read to be hashed
    assert len(files["safety-strict.yaml"].fingerprint) == 64
    plan = ConstitutionLibrary(folder=str(folder)).plan({})
    assert len(plan.versions) == 1 and plan.errors == [
        f"{folder / 'huge.yaml'}: file is {2 * 1024 * 1024 + 8} bytes, over the 1 MiB limit"
    ]


class _Echo(BaseHTTPRequestHandler):
    """A gateway that answers every request with a 502 whose body echoes the request headers, or (path
    /big) a 200 whose body never ends within the response limit."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _reply(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.startswith("/big"):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"x" * (1 << 20)
            for _ in range(70):  # 70 MiB, no Content-Length: the client must stop reading by itself
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
            return
        body = json.dumps({"error": "bad gateway", "request_headers": dict(self.headers)}).encode()
        self.send_response(502)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _reply  # noqa: N815 - http.server's names


@pytest.fixture
def echo_gateway() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_gateway_echoing_the_key_never_puts_it_into_errors(
    echo_gateway: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ECHO_TEST_KEY", KEY)
    spec = BackendSpec(
        kind="openai", base_url=f"{echo_gateway}/v1", served_model="m", api_key_env="ECHO_TEST_KEY"
    )
    with pytest.raises(BackendRequestError) as err:
        make_backend(spec.model_copy(update={"max_retries": 1})).choice_probabilities(HI, ["A", "B"])
    assert "HTTP 502" in str(err.value) and "bad gateway" in str(err.value) and KEY not in str(err.value)
    monkeypatch.setenv("ECHO_TEST_TOKEN", KEY)
    with LabelStudioClient(echo_gateway, "ECHO_TEST_TOKEN") as client:
        with pytest.raises(LabelStudioError) as ls_err:
            client.whoami()
    assert "HTTP 502" in str(ls_err.value) and KEY not in str(ls_err.value)


def test_a_server_answer_past_the_limit_is_not_read_to_its_end(echo_gateway: str) -> None:
    spec = BackendSpec(kind="openai", base_url=f"{echo_gateway}/big", served_model="m", max_retries=0)
    with pytest.raises(BackendRequestError, match=r"unusable answer \(response over the 64 MiB limit\)"):
        make_backend(spec).choice_probabilities(HI, ["A", "B"])


def test_a_hung_model_server_fails_the_item_at_its_deadline(silent_endpoint: str) -> None:
    spec = BackendSpec(kind="openai", base_url=f"{silent_endpoint}/v1", served_model="m", deadline_s=2)
    started = time.monotonic()
    with pytest.raises(BackendRequestError, match="deadline of 2 s reached"):
        make_backend(spec).choice_probabilities(HI, ["A", "B"])
    assert time.monotonic() - started < 30  # the deadline, not 6 attempts of the 30 s timeout


@pytest.mark.parametrize(
    "url", ["http://bob:pw-secret-9@127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1?api_key=pw-secret-9"]
)
def test_credentials_in_server_urls_are_refused_unechoed(url: str) -> None:
    with pytest.raises(ValueError) as err:
        BackendSpec(kind="openai", base_url=url, served_model="m")
    assert "must not carry credentials" in str(err.value) and "pw-secret-9" not in str(err.value)
    with pytest.raises(LabelStudioError) as ls_err:
        LabelStudioClient(url, token_env="T", environ={"T": "tok"})
    assert "must not carry credentials" in str(ls_err.value) and "pw-secret-9" not in str(ls_err.value)
