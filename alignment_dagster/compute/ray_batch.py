"""Ray job: a plan's model calls on Ray Data, one actor per worker, each shard cached as it finishes: the
judge's choice probabilities (`task: choices`) or sampled replies (`task: generate`).

    python -m alignment_dagster.compute.ray_batch   (submitted by `resources.compute`, reads Pipes extras)

Shards are Ray Data rows (one per batch), so a shard's prompts, which for the judge end where a pair ends,
reach the model in one call and the backend still shares their prefixes. Each actor builds the project's
own backend from its spec (transformers on CPU, in-process vLLM with prefix caching on GPUs): there is no
second scoring or sampling path. A worker writes its shard to the stage's cache before taking the next, and
a shard's object is named by its keys, so a killed worker costs at most the shard it held (retried on a
restarted actor, written once) and a killed job resumes from the shards already stored. Model calls are
counted by a named counter actor before each shard runs, so calls spent on a shard that was then lost are
counted too.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from alignment_dagster.backends import BackendSpec, Sampling, make_backend
from alignment_dagster.compute.batch_plan import read_plan
from alignment_dagster.compute.job_io import open_job_storage
from alignment_dagster.core.shard_cache import ShardCache


class ShardWorker:
    """A Ray Data actor: the model, loaded once, running whole shards."""

    def __init__(self, extras: dict, counter_name: str):
        import ray

        storage = open_job_storage(extras)
        self.plan = read_plan(storage, extras["plan_key"])
        self.cache = ShardCache(storage, extras["cache_prefix"])
        self.task = extras["task"]
        self.choices = list(extras.get("choices") or [])
        self.sampling = Sampling(**extras["sampling"]) if extras.get("sampling") else None
        self.n = int(extras.get("n") or 1)
        spec = dict(extras["spec"])
        if extras.get("adapter_key"):  # the stage's policy folder, from storage (its content, its identity)
            spec["adapter"] = str(
                storage.get_dir(extras["adapter_key"], Path(tempfile.mkdtemp()) / "adapter")
            )
        self.backend = make_backend(BackendSpec(**spec))
        self.counter = ray.get_actor(counter_name)

    def __call__(self, batch: dict) -> dict:
        import ray

        out: dict[str, list] = {"shard": list(batch["shard"]), "scored": [], **{k: [] for k in TOKEN_COUNTS}}
        for shard in batch["shard"]:
            keys, conversations = self.plan[int(shard)]
            before = self.backend.stats.snapshot()
            run = not self.cache.has_shard(keys)  # stored already: a retry of a shard its worker finished
            if run:
                ray.get(self.counter.add.remote(len(keys), os.getpid()))
                self.cache.put_many(dict(zip(keys, self._run(conversations), strict=True)))
            made = self.backend.stats.delta(before)
            out["scored"].append(len(keys) if run else 0)
            for k in TOKEN_COUNTS:
                out[k].append(getattr(made, k))
        return out

    def _run(self, conversations: list) -> list:
        """What the cache keeps per key: P(first choice) for the judge, the n replies for sampling."""
        if self.task == "generate":
            return self.backend.generate(conversations, n=self.n, sampling=self.sampling)
        probs = self.backend.choice_probabilities(conversations, self.choices)
        return [float(p[self.choices[0]]) for p in probs]


# What a worker's backend counted that the stage's cost accounting reads (`CallStats` fields).
TOKEN_COUNTS = ("prompt_tokens", "generated_tokens", "shared_prefix_tokens")


def _counter_class():
    import ray

    @ray.remote(num_cpus=0)
    class CallCounter:
        """Conversations sent to the model, per worker process (a killed worker's lost shard included)."""

        def __init__(self):
            self.calls: dict[int, int] = {}

        def add(self, n: int, pid: int) -> None:
            self.calls[pid] = self.calls.get(pid, 0) + n

        def get(self) -> dict[int, int]:
            return self.calls

    return CallCounter


def run_plan(extras: dict, log=print) -> dict:
    """Run every shard of the plan in `extras` on the cluster this job runs in; what to report."""
    import ray

    t0 = time.perf_counter()
    ray.init(log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the job log is the Pipes channel; progress goes there as lines
    storage = open_job_storage(extras)
    n_shards = len(read_plan(storage, extras["plan_key"]))
    counter_name = f"model-calls-{ray.get_runtime_context().get_job_id()}"
    counter = _counter_class().options(name=counter_name).remote()
    workers = int(extras["workers"])
    spec = dict(extras["spec"])
    if spec.get("kind", "transformers") == "transformers" and not spec.get("cpu_threads"):
        spec["cpu_threads"] = max(1, int(extras["cpus_per_worker"]))  # one worker's cores, not the machine's
    ds = ray.data.from_items([{"shard": n} for n in range(n_shards)], override_num_blocks=max(1, n_shards))
    resources = {"num_cpus": float(extras["cpus_per_worker"])}
    if extras.get("gpus_per_worker"):
        resources["num_gpus"] = float(extras["gpus_per_worker"])
    results = ds.map_batches(
        ShardWorker,
        fn_constructor_kwargs={"extras": {**extras, "spec": spec}, "counter_name": counter_name},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=workers),
        # A killed worker's actor restarts and its shard is retried there.
        max_restarts=-1,
        max_task_retries=-1,
        **resources,
    )
    done, scored, tokens = 0, 0, dict.fromkeys(TOKEN_COUNTS, 0)
    for row in results.iter_rows():
        done += 1
        scored += int(row["scored"])
        for k in TOKEN_COUNTS:
            tokens[k] += int(row[k])
        log(f"{extras['task']} shards: {done}/{n_shards} ({scored} conversations run)")
    calls = ray.get(counter.get.remote())
    return {
        "shards": n_shards,
        "stored_by_job": scored,  # a shard its killed worker had already stored counts there, not here
        "model_calls": sum(calls.values()),
        "worker_processes": len(calls),
        **tokens,
        "workers": workers,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def main(argv: list[str] | None = None) -> None:
    """Under Pipes (as submitted by the stage), or `--extras FILE` (a JSON of the same extras: benchmarks,
    debugging a plan by hand), which prints the report as the last line."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--extras", help="JSON file of the job's settings, instead of Pipes")
    args = ap.parse_args(argv)
    if args.extras:
        with open(args.extras) as f:
            print("REPORT " + json.dumps(run_plan(json.load(f))), flush=True)
        return
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        report = run_plan(dict(pipes.extras), pipes.log.info)
        pipes.report_custom_message(report)


if __name__ == "__main__":
    main()
