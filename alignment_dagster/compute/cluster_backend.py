"""A model backend as a stage sees it when its model runs on a cluster: identity and tokenizer here (so cache
keys and reply lengths are the local backend's), the model calls in a job (`compute.ray_batch`) that writes
them to the stage's cache shard by shard."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alignment_dagster.backends.base import Backend, BackendSpec, Conversation, Sampling
from alignment_dagster.backends.identity import content_hash, model_identity
from alignment_dagster.compute.batch_plan import write_plan
from alignment_dagster.compute.job_io import Submit
from alignment_dagster.core.shard_cache import ShardCache
from alignment_dagster.core.storage import Storage

JOB_MODULE = "alignment_dagster.compute.ray_batch"


def spec_identity(spec: BackendSpec) -> str:
    """The identity the backend `spec` names reports once loaded, read from its config alone (no weights)."""
    if spec.kind == "vllm":
        return model_identity("vllm", spec.model)[1]
    if spec.kind != "transformers":
        raise ValueError(
            f"a cluster runs the transformers or vllm backend in its workers, not {spec.kind!r} "
            "(an OpenAI-compatible server is already remote: use compute `local`)"
        )
    from transformers import AutoConfig

    from alignment_dagster.backends.adapter import adapter_identity

    path = model_identity("transformers", spec.model)[0]
    return adapter_identity(
        model_identity("transformers", spec.model, AutoConfig.from_pretrained(path))[1], spec.adapter
    )


class ClusterBackend(Backend):
    """Runs whole shards through `submit` (`score_shards`, `generate_shards`); call by call it cannot."""

    def __init__(self, spec: BackendSpec, submit: Submit, storage: Storage, job: dict[str, Any]):
        super().__init__()
        from transformers import AutoTokenizer

        self.spec = spec
        self._identity = spec_identity(spec)
        self.tokenizer = AutoTokenizer.from_pretrained(model_identity(spec.kind, spec.model)[0])
        self.submit, self.storage, self.job = submit, storage, dict(job)
        if spec.adapter:  # a trained policy folder here: the workers fetch it from storage (stored once)
            folder = Path(spec.adapter)
            key = f"compute/adapters/{content_hash(folder)}"
            if not storage.dir_exists(key):
                storage.put_dir(key, folder, content_addressed=True)
            self.job["adapter_key"] = key
        self.reports: list[dict[str, Any]] = []  # one per job, for the stage's metadata

    @property
    def identity(self) -> str:
        return self._identity

    def score_shards(
        self,
        shards: list[list[str]],
        prompts: dict[str, Conversation],
        choices: Sequence[str],
        cache: ShardCache,
    ) -> tuple[dict[str, float], int]:
        """Judge `shards` in one cluster job that caches each; (P(first choice) per key, model calls)."""
        return self._run(shards, prompts, cache, {"task": "choices", "choices": list(choices)})

    def generate_shards(
        self,
        shards: list[list[str]],
        conversations: dict[str, Conversation],
        n: int,
        sampling: Sampling,
        cache: ShardCache,
    ) -> tuple[dict[str, list[str]], int]:
        """Sample n replies per conversation in one cluster job that caches each shard; (replies per key,
        model calls)."""
        task = {"task": "generate", "n": n, "sampling": sampling.model_dump(mode="json")}
        return self._run(shards, conversations, cache, task)

    def _run(
        self, shards, conversations, cache: ShardCache, task: dict[str, Any]
    ) -> tuple[dict[str, Any], int]:
        extras = {
            **self.job,
            **task,
            "plan_key": write_plan(self.storage, shards, conversations),
            "cache_prefix": cache.prefix,
            "spec": self.spec.model_dump(mode="json"),
        }
        report = self.submit(JOB_MODULE, extras)
        self.reports.append(report)
        cache.refresh()
        values = cache.get_many([k for shard in shards for k in shard])
        lost = sum(len(s) for s in shards) - len(values)
        if lost:
            raise RuntimeError(f"cluster job {report.get('ray_job_id')} finished without {lost} results")
        run = int(report["model_calls"])  # calls made, a killed worker's lost shard included
        for name in ("prompt_tokens", "generated_tokens", "shared_prefix_tokens"):
            setattr(self.stats, name, getattr(self.stats, name) + int(report.get(name, 0)))
        if task["task"] == "choices":
            self.stats.scoring_calls += int(report["shards"])
            self.stats.scored_prompts += run
        else:
            self.stats.generate_calls += int(report["shards"])
            self.stats.generated_sequences += run * int(task["n"])
        return values, run

    def choice_probabilities(self, conversations: Sequence[Conversation], choices: Sequence[str]):
        raise NotImplementedError("a cluster backend scores whole shards (score_shards)")

    def generate(self, conversations: Sequence[Conversation], n: int = 1, sampling: Sampling | None = None):
        raise NotImplementedError(
            "a cluster backend generates whole shards (generate_shards); chain-of-thought judge templates "
            "need compute `local`"
        )
