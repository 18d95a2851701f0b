"""Critique -> revision chains on the real embedded SmolLM2 (policy and judge): SIGKILLed mid-run and
resumed without redoing a finished call, the chain structure the gate leaves, a rerun with zero model calls,
and an edited principle that reruns exactly the calls whose input changed (counted on the backend)."""

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
from alignment_dagster.data.prompts import STARTER_SOURCES, build_prompt_pool
from alignment_dagster.revision.call_cache import CallCache
from alignment_dagster.revision.chains import ChainSettings, run_chains
from alignment_dagster.revision.judging import RevisionJudge
from alignment_dagster.revision.phase_one import revision_prompts
from alignment_dagster.specs.constitution import parse_constitution
from tests.conftest import REPO

# Two principles that revise (one harm, one helpfulness guard); min_gain 0 lets chains go on whenever the
# judge leans the revision's way at all, so second rounds happen.
CONSTITUTION = """
name: chains
principles:
  - id: harm
    text: Choose the less harmful reply.
    role: harmless
    allows_refusal: true
    critique_request: Say how the reply could cause harm.
    revision_request: Rewrite the reply so it causes no harm.
  - id: help
    text: Choose the more helpful reply.
    role: helpful
    critique_request: Say how the reply could be more helpful.
    revision_request: Rewrite the reply to be more helpful.
revision:
  rounds: 2
  min_gain: 0.0
  demonstrations:
    - prompt: How do I hotwire a car?
      reply: Strip the ignition wires and touch them together.
      critique: It explains how to steal a car.
      revision: I can't help with starting a car that isn't yours; a locksmith can help if you lost your keys.
    - prompt: What is the boiling point of water at sea level?
      reply: 100 degrees Celsius.
      critique: Nothing; it is correct and harmless.
      revision: 100 degrees Celsius.
"""
# Shards of one call in the run that is killed (the kill lands between calls), batches of 8 after: the keys
# do not depend on the batching, so the resumed run finds every call the killed one finished.
KILLED = ChainSettings(max_new_tokens=12, shard_size=1)
SETTINGS = ChainSettings(max_new_tokens=12, shard_size=8)

WORKER = """
import sys
from pathlib import Path
from alignment_dagster.backends import BackendSpec, make_backend
from alignment_dagster.core.storage import LocalStorage
from tests.revision.test_chains import CONSTITUTION, KILLED, chains
from alignment_dagster.specs.constitution import parse_constitution
backend = make_backend(BackendSpec())
chains(parse_constitution(CONSTITUTION, "chains.yaml"), backend, LocalStorage(sys.argv[1]), KILLED)
"""


def prompts() -> pd.DataFrame:
    pool = build_prompt_pool(list(STARTER_SOURCES), lambda uri: b"").prompts
    return revision_prompts(pool, 2)  # a helpful and a red-team prompt


def chains(constitution, backend, store, settings: ChainSettings = SETTINGS):
    judge = RevisionJudge(constitution, lambda: backend, store)
    return run_chains(prompts(), constitution, backend, judge, CallCache(store, backend.identity), settings)


def shards(root: Path) -> int:
    return sum(1 for _ in (root / "cache" / "revision-calls").rglob("shard-*.parquet"))


def kill_after_shards(root: Path, n: int) -> None:
    """Run the chains in a subprocess and SIGKILL it once `n` call shards are stored."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(root)],
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 600
    while shards(root) < n:
        assert proc.poll() is None, f"the chains ended before the kill: {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline, "no shards in time"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def keys(rounds: pd.DataFrame) -> set[str]:
    return set(rounds["critique_key"].dropna()) | set(rounds["revision_key"].dropna())


def check_structure(rounds: pd.DataFrame) -> None:
    """Round 0 is the first reply; rounds follow each other until one stops the chain; each round revises
    the last accepted reply; `best` is the last accepted round (gains are >= min_gain = 0)."""
    for _, chain in rounds.groupby("prompt_id"):
        chain = chain.sort_values("round")
        assert list(chain["round"]) == list(range(len(chain))) and len(chain) <= 3
        current = chain.iloc[0]["revision"]
        for i, row in enumerate(chain.iloc[1:].itertuples(index=False), start=1):
            assert row.before == current and row.principle_id in ("harm", "help")
            assert row.critique and row.critique_key and row.revision_key
            if row.accepted:
                current = row.revision
            if i < len(chain) - 1:
                assert not row.stop  # a chain goes on only after a round that did not stop it
        last = chain.iloc[-1]
        assert last["stop"] or last["round"] == 2
        accepted = chain[chain["accepted"]]
        assert list(chain.loc[chain["best"], "round"]) == list(accepted["round"].tail(1))


@pytest.mark.slow
def test_chains_resume_after_sigkill_and_rerun_only_what_an_edit_changed(
    tmp_path: Path, smollm2_path
) -> None:
    root = tmp_path / "root"
    kill_after_shards(root, 3)  # the two first replies and a critique, at least
    store = LocalStorage(root)
    constitution = parse_constitution(CONSTITUTION, "chains.yaml")
    backend = make_backend(BackendSpec())
    at_kill = len(CallCache(store, backend.identity))
    assert at_kill >= 3

    before = backend.stats.snapshot()
    first = chains(constitution, backend, store)
    stored = len(CallCache(store, backend.identity))
    # Every call finished before the kill is reused, every other one is made once: nothing is redone.
    assert (first.calls.cached, first.calls.made) == (at_kill, stored - at_kill)
    assert first.calls.made == backend.stats.delta(before).generated_sequences > 0
    assert first.calls.needed == stored == 2 + 2 * int((first.rounds["round"] > 0).sum())
    check_structure(first.rounds)

    before = backend.stats.snapshot()
    again = chains(constitution, backend, store)
    assert (again.calls.made, backend.stats.delta(before).generated_sequences) == (0, 0)
    assert backend.stats.delta(before).scored_prompts == 0  # the judge's answers are cached too
    pd.testing.assert_frame_equal(again.rounds, first.rounds)

    # Reword the critique request of the principle the first chain drew in round 1.
    edited_id = first.rounds.loc[first.rounds["round"] == 1, "principle_id"].iloc[0]
    edited = parse_constitution(
        CONSTITUTION.replace(
            {
                "harm": "Say how the reply could cause harm.",
                "help": "Say how the reply could be more helpful.",
            }[edited_id],
            "Point out, briefly, what is wrong with the reply.",
        ),
        "chains-edited.yaml",
    )
    before = backend.stats.snapshot()
    third = chains(edited, backend, store)
    old = keys(first.rounds)
    assert (
        third.calls.made == len(keys(third.rounds) - old) == backend.stats.delta(before).generated_sequences
    )
    drew = 0
    for pid, chain in third.rounds.groupby("prompt_id"):
        rounds = chain[chain["principle_id"] == edited_id]["round"]
        cut = int(rounds.min()) if len(rounds) else 99
        kept = chain[chain["round"] < cut]
        pd.testing.assert_frame_equal(
            kept.reset_index(drop=True),
            first.rounds[(first.rounds["prompt_id"] == pid) & (first.rounds["round"] < cut)].reset_index(
                drop=True
            ),
        )
        if len(rounds):
            drew += 1
            assert chain.loc[chain["round"] == cut, "critique_key"].iloc[0] not in old  # its input changed
    assert drew >= 1 and third.calls.made >= drew
