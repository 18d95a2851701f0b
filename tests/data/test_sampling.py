"""Response sampling: shards are cached as they finish; a SIGKILLed stage resumes without redoing them."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from alignment_dagster.core.storage import LocalStorage
from alignment_dagster.data.sampling import generation_cache
from tests.conftest import REPO

SCRIPT = """
import sys, pandas as pd
from alignment_dagster.backends import BackendSpec, Sampling, make_backend
from alignment_dagster.data.sampling import generation_cache, sample_responses
from alignment_dagster.core.storage import LocalStorage
backend = make_backend(BackendSpec(batch_size=2))
cache = generation_cache(LocalStorage(sys.argv[1]), backend.identity)
prompts = pd.read_parquet(sys.argv[2])
replies, counts = sample_responses(prompts, backend, Sampling(max_new_tokens=24), 2, cache, shard_size=2,
                                   progress=False)
calls = backend.stats.generate_calls
print("SAMPLED", counts["sampled"], "CACHED", counts["cached"], "GENERATE_CALLS", calls, flush=True)
"""


@pytest.mark.slow
def test_sampling_resumes_after_sigkill(tmp_path: Path) -> None:
    prompts = pd.DataFrame(
        {
            "prompt_id": [f"p{i}" for i in range(10)],
            "prompt": [f"Write one sentence about the number {i}." for i in range(10)],
            "category": "helpful",
        }
    )
    prompts.to_parquet(tmp_path / "prompts.parquet")
    (tmp_path / "run.py").write_text(SCRIPT)
    root = tmp_path / "root"
    args = [sys.executable, str(tmp_path / "run.py"), str(root), str(tmp_path / "prompts.parquet")]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, text=True, start_new_session=True)
    shard_dir = root / "cache" / "generations"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(shard_dir.rglob("shard-*.parquet"))) < 2:
        assert proc.poll() is None, "sampling finished before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(shard_dir.rglob("shard-*.parquet")))
    assert 2 <= done < 5
    out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    words = out.stdout.split()
    sampled, cached, calls = int(words[1]), int(words[3]), int(words[5])
    assert (sampled, cached) == (10 - 2 * done, 2 * done)
    assert calls == 5 - done  # only unfinished shards were generated (one generate call per 2-prompt shard)
    # A finished stage re-run makes no model calls.
    again = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.stdout.split()[1:6:2] == ["0", "10", "0"]
    assert (
        len(generation_cache(LocalStorage(root), "transformers:another-model@0")) == 0
    )  # keyed by model identity
