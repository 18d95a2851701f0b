"""`response_pairs` (+ `known_labels`): policy samples paired per prompt, plus imported labelled pairs."""

import pandas as pd
from dagster import AssetExecutionContext, AssetOut, Config, Output, multi_asset
from pydantic import Field

from alignment_dagster.backends import Sampling
from alignment_dagster.data.pair_pool import KnownSplit, PairSampling, build_pair_pool
from alignment_dagster.data.sampling import generation_cache
from alignment_dagster.resources.compute import ComputeResource
from alignment_dagster.resources.datasets import ImportedPairs
from alignment_dagster.resources.models import ModelBackendResource
from alignment_dagster.resources.profile import RunProfile
from alignment_dagster.resources.storage_io import StorageResource
from alignment_dagster.resources.tracking import MLflowTracking, metadata_for

SIZED = ("max_prompts", "max_new_tokens", "import_limit", "judge_heldout")


class ResponsePairsConfig(Config):
    """Unset sizes (None) come from the run profile (`core.profiles`, ALIGNMENT_PROFILE)."""

    sample: bool = Field(True, description="Sample replies from the policy for train prompts.")
    max_prompts: int | None = Field(None, ge=0, description="Train prompts to sample for (0 = all).")
    k: int = Field(2, ge=2, description="Replies per prompt.")
    pairs_per_prompt: int = Field(1, ge=1, description="Pairs kept per prompt (of k*(k-1)/2).")
    temperature: float = 0.9
    top_p: float = 0.95
    max_new_tokens: int | None = Field(None, ge=1, description="Tokens per sampled reply.")
    seed: int = 0
    import_sources: list[str] | None = Field(
        None,
        description="Pair files to import (HH-RLHF JSONL or prompt/response_a/response_b[/label]); local or "
        "s3://. Empty: the `imported_pairs` resource's files (ALIGNMENT_IMPORT_PAIRS).",
    )
    import_limit: int | None = Field(None, ge=0, description="Most pairs imported in total (0 = all).")
    heldout_fraction: float = Field(
        0.3,
        ge=0.0,
        le=1.0,
        description="Share of imported labelled pairs held "
        "out (by a hash of the prompt): judged and scored, never trained on.",
    )
    judge_heldout: int | None = Field(None, ge=0, description="Held-out pairs the judge sees (0 = all).")
    shard_size: int = Field(8, ge=1, description="Prompts per cached shard (resume granularity).")

    def pair_sampling(self, max_prompts: int, max_new_tokens: int) -> PairSampling | None:
        if not self.sample:
            return None
        sampling = Sampling(
            temperature=self.temperature, top_p=self.top_p, max_new_tokens=max_new_tokens, seed=self.seed
        )
        return PairSampling(sampling, self.k, max_prompts, self.pairs_per_prompt, self.shard_size)


@multi_asset(
    outs={
        "response_pairs": AssetOut(
            group_name="data", description="Reply pairs to judge (no labels).", kinds={"parquet"}
        ),
        "known_labels": AssetOut(
            group_name="data",
            kinds={"parquet"},
            description="Human labels of imported "
            "pairs, kept apart from the judge: a training part and a held-out part.",
        ),
    },
    can_subset=False,
)
def response_pairs(
    context: AssetExecutionContext,
    config: ResponsePairsConfig,
    prompt_pool: pd.DataFrame,
    storage: StorageResource,
    policy_model: ModelBackendResource,
    imported_pairs: ImportedPairs,
    profile: RunProfile,
    mlflow: MLflowTracking,
    compute: ComputeResource,
):
    """Sample k replies per train prompt from the policy and pair them; import labelled pairs alongside."""
    store = storage.open()
    backends = compute.backends(context, policy_model.backend, policy_model.spec(), store, storage.s3)
    sizes = profile.sizes("response_pairs", config, SIZED)
    sources = config.import_sources if config.import_sources is not None else imported_pairs.sources
    pool = build_pair_pool(
        prompt_pool,
        sampling=config.pair_sampling(sizes["max_prompts"], sizes["max_new_tokens"]),
        backend=backends,
        cache=lambda identity: generation_cache(store, identity),
        import_sources=sources,
        read_bytes=storage.read_uri,
        import_limit=sizes["import_limit"] or None,
        split=KnownSplit(config.heldout_fraction, sizes["judge_heldout"] or None),
    )
    for bad in pool.bad_rows[:5]:
        context.log.warning(f"bad pair row skipped: {bad}")
    report = pool.report().add(**backends.job_summary())
    report.params.update(
        {
            **config.model_dump(),
            **sizes,
            "import_sources": sources,
            "profile": profile.name,
            "policy_model": policy_model.spec().model_dump(),
        }
    )
    yield Output(pool.pairs, output_name="response_pairs", metadata=mlflow.record(context, report))
    yield Output(pool.labels, output_name="known_labels", metadata=metadata_for(pool.labels_report()))
