"""The judge backend as the stage sees it when its model runs on a cluster: identity and tokenizer here (so
cache keys and reply lengths are the local backend's), model calls in a job (`compute.ray_judge`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from alignment_dagster.backends.base import Backend, BackendSpec, Conversation, Sampling
from alignment_dagster.backends.identity import model_identity
from alignment_dagster.compute.job_io import Submit
from alignment_dagster.compute.judge_plan import write_plan
from alignment_dagster.core.shard_cache import ShardCache
from alignment_dagster.core.storage import Storage

JOB_MODULE = "alignment_dagster.compute.ray_judge"


def spec_identity(spec: BackendSpec) -> str:
    """The identity the backend `spec` names reports once loaded, read from its config alone (no weights)."""
    if spec.kind == "vllm":
        return model_identity("vllm", spec.model)[1]
    if spec.kind != "transformers":
        raise ValueError(
            f"judging on a cluster runs the transformers or vllm backend in its workers, not {spec.kind!r} "
            "(an OpenAI-compatible server is already remote: use compute `local`)"
        )
    from transformers import AutoConfig

    from alignment_dagster.backends.adapter import adapter_identity

    path = model_identity("transformers", spec.model)[0]
    return adapter_identity(
        model_identity("transformers", spec.model, AutoConfig.from_pretrained(path))[1], spec.adapter
    )


class ClusterScorer(Backend):
    """Scores whole shards through `submit` (`score_shards`); prompt by prompt it cannot score or generate."""

    def __init__(self, spec: BackendSpec, submit: Submit, storage: Storage, job: dict[str, Any]):
        super().__init__()
        from transformers import AutoTokenizer

        self.spec = spec
        self._identity = spec_identity(spec)
        self.tokenizer = AutoTokenizer.from_pretrained(model_identity(spec.kind, spec.model)[0])
        self.submit, self.storage, self.job = submit, storage, job
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
        """Score `shards` in one cluster job that caches each; (probability per key, prompts scored)."""
        plan_key = write_plan(self.storage, shards, prompts)
        extras = {
            **self.job,
            "plan_key": plan_key,
            "cache_prefix": cache.prefix,
            "choices": list(choices),
            "spec": self.spec.model_dump(mode="json"),
        }
        report = self.submit(JOB_MODULE, extras)
        self.reports.append(report)
        cache.refresh()
        values = cache.get_many([k for shard in shards for k in shard])
        lost = sum(len(s) for s in shards) - len(values)
        if lost:
            raise RuntimeError(f"judging job {report.get('ray_job_id')} finished without {lost} judgments")
        self.stats.scoring_calls += int(report["shards"])
        self.stats.scored_prompts += int(report["scored_prompts"])
        return values, int(report["scored_prompts"])

    def choice_probabilities(self, conversations: Sequence[Conversation], choices: Sequence[str]):
        raise NotImplementedError("a cluster judge scores whole shards (score_shards)")

    def generate(self, conversations: Sequence[Conversation], n: int = 1, sampling: Sampling | None = None):
        raise NotImplementedError(
            "a cluster judge does not generate here: chain-of-thought templates need compute `local`"
        )
