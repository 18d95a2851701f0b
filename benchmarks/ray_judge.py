"""Judge throughput on the same real pairs, side by side in one run: in-process, on Ray (1 and 2 workers),
and through `vllm serve` (CPU) with prefix caching via the `openai` backend.

    .venv/bin/python benchmarks/ray_judge.py [--pairs 40] [--shard-size 64] [--json out.json]

Every engine judges the first `--pairs` HH-RLHF dev pairs under the starter `constitutional-ai` (5
principles, both orders: 10 judge prompts per pair) with `judge_pairs`, the same shard boundaries and a cold
judgment cache of its own:

* in-process: the transformers backend in this process, 2 torch threads, shared-prefix scoring;
* Ray, 1 worker with 2 CPUs, and Ray, 2 workers with 1 CPU each: `compute.cluster_backend` submits one job
  (`compute.ray_batch`, Ray Data actors building the same transformers backend) to a local head started
  here (`ray start --head`, 256 MB object store); timed from submission to the last shard read back, so the
  job's start and each actor's model load are in the figure (a stage pays them too). Submitted with
  `--extras` instead of Pipes: this script has no Dagster run;
* vllm serve: vLLM's CPU build from .venvs/vllm with `--enable-prefix-caching`, the `openai` backend asking
  for the choices by token id (`logprob_token_ids`); the server's start is reported, not timed.

The largest |p(A)| difference of each engine against in-process is printed beside its rate.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alignment_dagster.backends import BackendSpec, make_backend
from alignment_dagster.backends.embedded import embedded_model_path
from alignment_dagster.compute.cluster_backend import ClusterBackend
from alignment_dagster.compute.job_io import storage_extras, submit_without_pipes
from alignment_dagster.compute.local_ray import local_ray_cluster
from alignment_dagster.core.storage import LocalStorage
from alignment_dagster.data.pairs import import_pairs
from alignment_dagster.judge.cache import JudgmentCache
from alignment_dagster.judge.runner import judge_pairs
from alignment_dagster.judge.templates import get_template
from alignment_dagster.specs.constitution import load_constitution
from benchmarks.generation import free_port, start_server

DEV = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-dev.jsonl.gz"


def timed(name: str, pairs, constitution, scorer, folder: Path, shard_size: int) -> dict:
    template = get_template(constitution.judge.template)
    cache = JudgmentCache(LocalStorage(folder), scorer.identity, template.version)
    t0 = time.perf_counter()
    result = judge_pairs(pairs, constitution, scorer, template, cache, shard_size=shard_size, progress=False)
    seconds = time.perf_counter() - t0
    p = result.principles.set_index(["pair_id", "principle_id"])["p_a_forward"]
    print(f"{name}: {len(pairs) / seconds:.3f} pairs/s ({seconds:.1f}s)", flush=True)
    return {
        "engine": name,
        "seconds": seconds,
        "pairs_per_s": len(pairs) / seconds,
        "p": p,
        "model_calls": result.stats.model_calls,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=40)
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    constitution = load_constitution(REPO / "constitutions" / "constitutional-ai.yaml")
    pairs = import_pairs([str(DEV)], lambda p: Path(p).read_bytes(), limit=args.pairs).pairs
    work = Path(tempfile.mkdtemp(prefix="ray-judge-bench-"))
    load0 = os.getloadavg()[0]
    rows = [
        timed(
            "in-process (2 threads)",
            pairs,
            constitution,
            make_backend(BackendSpec(cpu_threads=2)),
            work / "local",
            args.shard_size,
        )
    ]
    t0 = time.perf_counter()
    with local_ray_cluster(num_cpus=2, object_store_mb=256) as cluster:
        started = time.perf_counter() - t0
        os.environ.update(cluster.env)
        submit = submit_without_pipes(cluster.address, work)
        for workers, cpus in ((1, 2.0), (2, 1.0)):
            store = LocalStorage(work / f"ray-{workers}")
            job = {**storage_extras(store), "workers": workers, "cpus_per_worker": cpus, "gpus_per_worker": 0}
            scorer = ClusterBackend(BackendSpec(), submit, store, job)
            rows.append(
                timed(
                    f"Ray, {workers} worker(s) x {cpus:g} CPU",
                    pairs,
                    constitution,
                    scorer,
                    work / f"ray-{workers}",
                    args.shard_size,
                )
            )
    port = free_port()
    server, ready_s = start_server(port, work / "vllm.log", ("--enable-prefix-caching",))
    try:
        remote = make_backend(
            BackendSpec(
                kind="openai",
                base_url=f"http://127.0.0.1:{port}/v1",
                served_model="smollm2",
                model=str(embedded_model_path()),
                timeout_s=600,
                deadline_s=600,
            )
        )
        rows.append(
            timed(
                "vllm serve (CPU, prefix caching) via openai",
                pairs,
                constitution,
                remote,
                work / "vllm",
                args.shard_size,
            )
        )
    finally:
        server.terminate()
        server.wait(timeout=60)
    base = rows[0]
    print(
        f"\n{args.pairs} HH pairs x {len(constitution.principles)} principles x 2 orders; shard size "
        f"{args.shard_size}; load average {load0:.1f} -> {os.getloadavg()[0]:.1f}; Ray head up in "
        f"{started:.1f}s, vllm serve ready in {ready_s:.0f}s\n"
    )
    print("| engine | pairs/s | seconds | vs in-process | max abs p(A) diff vs in-process |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        diff = float((r["p"] - base["p"]).abs().max())
        r["max_diff"] = diff
        print(
            f"| {r['engine']} | {r['pairs_per_s']:.3f} | {r['seconds']:.1f} | "
            f"{r['pairs_per_s'] / base['pairs_per_s']:.2f}x | {diff:.1e} |"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps([{k: v for k, v in r.items() if k != "p"} for r in rows], indent=1)
        )


if __name__ == "__main__":
    main()
