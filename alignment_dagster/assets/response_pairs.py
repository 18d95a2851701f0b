"""`response_pairs` (+ `known_labels`): policy samples paired per prompt, plus imported labelled pairs."""

import pandas as pd
from dagster import AssetExecutionContext, AssetOut, Config, MetadataValue, Output, multi_asset
from pydantic import Field

from alignment_dagster.backends import Sampling
from alignment_dagster.core.reporting import markdown_table
from alignment_dagster.core.settings import Settings
from alignment_dagster.data.pairs import LABEL_COLUMNS, PAIR_COLUMNS, import_pairs
from alignment_dagster.data.sampling import generation_cache, sample_responses, sampled_pairs
from alignment_dagster.resources.models import ModelBackendResource
from alignment_dagster.resources.storage_io import StorageResource
from alignment_dagster.resources.tracking import MLflowTracking


class ResponsePairsConfig(Config):
    sample: bool = Field(True, description="Sample replies from the policy for train prompts.")
    max_prompts: int = Field(16, ge=0, description="Train prompts to sample for (0 = all).")
    k: int = Field(2, ge=2, description="Replies per prompt.")
    pairs_per_prompt: int = Field(1, ge=1, description="Pairs kept per prompt (of k*(k-1)/2).")
    temperature: float = 0.9
    top_p: float = 0.95
    max_new_tokens: int = 96
    seed: int = 0
    import_sources: list[str] = Field(
        default_factory=lambda: list(Settings.from_env().import_pairs),
        description="Pair files to import (HH-RLHF JSONL or prompt/response_a/response_b[/label]); local or s3://.",
    )
    import_limit: int = Field(60, ge=0, description="Most pairs imported in total (0 = all).")
    shard_size: int = Field(8, ge=1, description="Prompts per cached shard (resume granularity).")


def _length_stats(df: pd.DataFrame) -> dict[str, float]:
    lengths = pd.concat([df["response_a"].str.len(), df["response_b"].str.len()])
    return {
        "mean": float(lengths.mean()),
        "p50": float(lengths.quantile(0.5)),
        "p90": float(lengths.quantile(0.9)),
    }


@multi_asset(
    outs={
        "response_pairs": AssetOut(
            group_name="data", description="Reply pairs to judge (no labels).", kinds={"parquet"}
        ),
        "known_labels": AssetOut(
            group_name="data",
            description="Human labels of imported pairs, kept apart from the judge.",
            kinds={"parquet"},
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
    mlflow: MLflowTracking,
):
    """Sample k replies per train prompt from the policy and pair them; import labelled pairs alongside."""
    store = storage.open()
    frames, dropped, counts = [], {}, {}
    if config.sample:
        train = prompt_pool[prompt_pool["split"] == "train"]
        train = train.head(config.max_prompts) if config.max_prompts else train
        backend = policy_model.backend()
        sampling = Sampling(
            temperature=config.temperature,
            top_p=config.top_p,
            max_new_tokens=config.max_new_tokens,
            seed=config.seed,
        )
        replies, counts = sample_responses(
            train,
            backend,
            sampling,
            config.k,
            generation_cache(store, backend.identity),
            shard_size=config.shard_size,
        )
        pairs, drops = sampled_pairs(train, replies, backend.identity, config.pairs_per_prompt)
        frames.append(pairs)
        dropped.update({f"sampled.{k}": v for k, v in drops.items()})
    labels = pd.DataFrame(columns=LABEL_COLUMNS)
    bad = []
    if config.import_sources:
        imported = import_pairs(config.import_sources, storage.read_uri, limit=config.import_limit or None)
        frames.append(imported.pairs)
        labels = imported.labels
        bad = imported.bad_rows
        dropped.update({f"imported.{k}": v for k, v in imported.dropped.items()})
        for b in bad[:5]:
            context.log.warning(f"bad pair row skipped: {b}")
    pairs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PAIR_COLUMNS)
    pairs = pairs.drop_duplicates("pair_id").reset_index(drop=True)
    if pairs.empty:
        raise ValueError("no response pairs: enable sampling or give import_sources")
    by_origin = {str(k): int(v) for k, v in pairs["origin"].value_counts().items()}
    lengths = _length_stats(pairs)
    with mlflow.asset_run(context) as run:
        run.log_params({**config.model_dump(), "policy_model": policy_model.spec().model_dump()})
        run.log_metrics(
            {
                "n_pairs": len(pairs),
                "n_known_labels": len(labels),
                "bad_rows": len(bad),
                **{f"origin.{k}": v for k, v in by_origin.items()},
                **{f"dropped.{k}": v for k, v in dropped.items()},
                **{f"response_chars.{k}": v for k, v in lengths.items()},
                **{f"prompts.{k}": v for k, v in counts.items()},
            }
        )
    preview = pairs[["pair_id", "origin", "category", "prompt", "response_a", "response_b"]]
    yield Output(
        pairs,
        output_name="response_pairs",
        metadata={
            "n_pairs": len(pairs),
            "by_origin": MetadataValue.json(by_origin),
            "dropped": MetadataValue.json(dropped),
            "prompts_sampled_vs_cached": MetadataValue.json(counts),
            "response_chars": MetadataValue.json(lengths),
            "bad_rows": len(bad),
            "preview": MetadataValue.md(markdown_table(preview, max_chars=60)),
            **run.metadata(),
        },
    )
    yield Output(
        labels,
        output_name="known_labels",
        metadata={
            "n_labels": len(labels),
            "by_label": MetadataValue.json(
                {str(k): int(v) for k, v in labels["label"].value_counts().items()}
            ),
        },
    )
