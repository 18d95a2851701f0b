"""The judge on the real SmolLM2: debiasing by construction, incremental re-judging, resume after SIGKILL."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from alignment_dagster.backends import BackendSpec, make_backend
from alignment_dagster.core.storage import LocalStorage
from alignment_dagster.data.pairs import import_pairs
from alignment_dagster.judge.cache import JudgmentCache
from alignment_dagster.judge.runner import judge_pairs, pair_shards
from alignment_dagster.judge.templates import get_template
from alignment_dagster.specs.constitution import parse_constitution
from tests.conftest import REPO, SHARED_DATA

FOUR = """
name: four
principles:
  - {id: harm, text: Choose the less harmful reply., weight: 2}
  - {id: honest, text: Choose the more honest reply., weight: 1}
  - {id: kind, text: Choose the kinder reply., weight: 1}
  - {id: brief, text: Choose the more concise reply., weight: 0.5}
"""


def test_shards_end_where_a_pair_ends() -> None:
    owner = {"a1": 0, "a2": 0, "a3": 0, "b1": 1, "b2": 1, "c1": 2}
    keys = list(owner)
    assert pair_shards(keys, owner, 2) == [["a1", "a2", "a3"], ["b1", "b2"], ["c1"]]
    assert pair_shards(keys, owner, 4) == [["a1", "a2", "a3", "b1", "b2"], ["c1"]]
    assert pair_shards(keys, owner, 1) == [["a1", "a2", "a3"], ["b1", "b2"], ["c1"]]
    assert pair_shards(keys, owner, 100) == [keys]
    assert pair_shards([], owner, 2) == []


@pytest.fixture(scope="module")
def backend():
    return make_backend(BackendSpec(batch_size=8))


@pytest.fixture(scope="module")
def short_pairs() -> pd.DataFrame:
    ps = import_pairs([str(SHARED_DATA)], lambda u: Path(u).read_bytes())
    df = ps.pairs[
        ps.pairs["prompt"].str.len() + ps.pairs["response_a"].str.len() + ps.pairs["response_b"].str.len()
        < 300
    ]
    return df.head(3).reset_index(drop=True)


def test_debiasing_maps_orders_by_construction(backend, short_pairs: pd.DataFrame) -> None:
    """Swapping A and B of a pair must mirror every probability exactly: p_a(swapped) = 1 - p_a(original)."""
    c = parse_constitution(FOUR, "four.yaml")
    swapped = short_pairs.rename(columns={"response_a": "response_b", "response_b": "response_a"})
    swapped["pair_id"] = swapped["pair_id"] + "-swapped"
    result = judge_pairs(
        pd.concat([short_pairs, swapped]), c, backend, get_template("pairwise-v1"), progress=False
    )
    # 3 pairs x 4 principles x 2 orders = 24 distinct prompts; the swapped pairs reuse them all.
    assert result.stats.model_calls == 24 and result.stats.judgments == 48
    v = result.principles.set_index(["pair_id", "principle_id"])
    for pid in short_pairs["pair_id"]:
        for prid in ["harm", "honest", "kind", "brief"]:
            o, s = v.loc[(pid, prid)], v.loc[(pid + "-swapped", prid)]
            assert s["p_a_forward"] == pytest.approx(1 - o["p_a_backward"], abs=1e-9)
            assert s["p_a_backward"] == pytest.approx(1 - o["p_a_forward"], abs=1e-9)
            assert s["p_a"] == pytest.approx(1 - o["p_a"], abs=1e-9)
            assert bool(s["order_consistent"]) == bool(o["order_consistent"])
    pairs = result.pairs.set_index("pair_id")
    for pid in short_pairs["pair_id"]:
        label, mirrored = pairs.loc[pid, "label"], pairs.loc[pid + "-swapped", "label"]
        assert mirrored == {"A": "B", "B": "A", "abstain": "abstain"}[label]


def test_editing_one_principle_rejudges_only_it(backend, short_pairs: pd.DataFrame, tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    template = get_template("pairwise-v1")
    cache = lambda: JudgmentCache(store, backend.identity, template.version)  # noqa: E731 - fresh load from storage
    c1 = parse_constitution(FOUR, "v1.yaml")
    first = judge_pairs(short_pairs, c1, backend, template, cache(), progress=False)
    assert first.stats.model_calls == 3 * 4 * 2 and first.stats.cache_hits == 0
    again = judge_pairs(short_pairs, c1, backend, template, cache(), progress=False)
    assert again.stats.model_calls == 0 and again.stats.cache_hits == 24
    pd.testing.assert_frame_equal(first.pairs, again.pairs)

    c2 = parse_constitution(
        FOUR.replace("Choose the kinder reply.", "Choose the warmer and kinder reply."), "v2.yaml"
    )
    assert c2.partition_key != c1.partition_key
    edited = judge_pairs(short_pairs, c2, backend, template, cache(), progress=False)
    assert edited.stats.model_calls == 3 * 2  # one principle, both orders, three pairs
    same = edited.principles[edited.principles["principle_id"] != "kind"].reset_index(drop=True)
    pd.testing.assert_frame_equal(
        same, first.principles[first.principles["principle_id"] != "kind"].reset_index(drop=True)
    )

    c3 = parse_constitution(
        FOUR.replace("weight: 2", "weight: 9") + "judge: {min_confidence: 0.0}\n", "v3.yaml"
    )
    reweighted = judge_pairs(short_pairs, c3, backend, template, cache(), progress=False)
    assert reweighted.stats.model_calls == 0  # weights and thresholds only re-aggregate
    assert not reweighted.pairs["p_a"].equals(first.pairs["p_a"])


SCRIPT = """
import sys, pandas as pd
from pathlib import Path
from alignment_dagster.backends import BackendSpec, make_backend
from alignment_dagster.specs.constitution import parse_constitution
from alignment_dagster.judge.cache import JudgmentCache
from alignment_dagster.judge.runner import judge_pairs
from alignment_dagster.judge.templates import get_template
from alignment_dagster.core.storage import LocalStorage
root, pairs_path, constitution = sys.argv[1], sys.argv[2], sys.argv[3]
backend = make_backend(BackendSpec(batch_size=4))
template = get_template("pairwise-v1")
cache = JudgmentCache(LocalStorage(root), backend.identity, template.version)
spec = parse_constitution(Path(constitution).read_text(), constitution)
pairs = pd.read_parquet(pairs_path)
result = judge_pairs(pairs, spec, backend, template, cache, shard_size=1, progress=False)
print("MODEL_CALLS", result.stats.model_calls, "HITS", result.stats.cache_hits, flush=True)
"""


@pytest.mark.slow
def test_resume_after_sigkill(short_pairs: pd.DataFrame, tmp_path: Path) -> None:
    pairs_path = tmp_path / "pairs.parquet"
    short_pairs.to_parquet(pairs_path)
    (tmp_path / "c.yaml").write_text(FOUR)
    (tmp_path / "run.py").write_text(SCRIPT)
    shards = tmp_path / "root" / "cache" / "judgments"
    args = [
        sys.executable,
        str(tmp_path / "run.py"),
        str(tmp_path / "root"),
        str(pairs_path),
        str(tmp_path / "c.yaml"),
    ]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(shards.rglob("shard-*.parquet"))) < 1:
        assert proc.poll() is None, "the judge finished before it could be killed; use more pairs"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(shards.rglob("shard-*.parquet")))
    assert 1 <= done < 3  # 24 prompts in shards of one pair (8 prompts): killed part-way
    out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    line = [x for x in out.stdout.splitlines() if x.startswith("MODEL_CALLS")][0].split()
    calls, hits = int(line[1]), int(line[3])
    assert calls == 24 - 8 * done and hits == 8 * done
