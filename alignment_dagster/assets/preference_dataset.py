"""`preference_dataset`: AI and human labels blended into TRL-ready rows, per constitution x blend."""

import pandas as pd
from dagster import AssetExecutionContext, AssetIn, MetadataValue, MultiToSingleDimensionPartitionMapping, asset

from alignment_dagster.blend import blend_preferences
from alignment_dagster.human import aggregate_labels
from alignment_dagster.partitions import constitution_blend_partitions
from alignment_dagster.reporting import markdown_table
from alignment_dagster.resources.library import BlendLibrary
from alignment_dagster.resources.tracking import MLflowTracking

BY_CONSTITUTION = MultiToSingleDimensionPartitionMapping(partition_dimension_name="constitution")


@asset(
    partitions_def=constitution_blend_partitions,
    ins={
        "ai_preferences": AssetIn(partition_mapping=BY_CONSTITUTION),
        "human_labels": AssetIn(partition_mapping=BY_CONSTITUTION),
        "response_pairs": AssetIn(),
    },
    group_name="training",
    kinds={"parquet"},
)
def preference_dataset(
    context: AssetExecutionContext,
    ai_preferences: pd.DataFrame,
    human_labels: pd.DataFrame,
    response_pairs: pd.DataFrame,
    blend_library: BlendLibrary,
    mlflow: MLflowTracking,
) -> pd.DataFrame:
    """Blend AI and human labels by the blend's rules into prompt/chosen/rejected rows (no model calls)."""
    keys = context.partition_key.keys_by_dimension
    source, _, blend = blend_library.find(keys["blend"])
    human = aggregate_labels(human_labels) if len(human_labels) else pd.DataFrame(columns=["pair_id", "choice"])
    result = blend_preferences(response_pairs, ai_preferences, human, blend)
    ds = result.dataset
    splits = {str(k): int(v) for k, v in ds["split"].value_counts().items()} if len(ds) else {}
    with mlflow.asset_run(context, tags={"blend.name": blend.name, "blend.hash": blend.content_hash}) as run:
        run.log_params({"blend": blend.model_dump(), "blend.source": source})
        run.log_metrics({"n_rows": len(ds), **{f"source.{k}": v for k, v in result.counts.items()},
                         **{f"conflicts.{k}": v for k, v in result.conflicts.items()},
                         **{f"dropped.{k}": v for k, v in result.dropped.items()},
                         **{f"split.{k}": v for k, v in splits.items()}})
        if len(ds):
            flat = ds[["pair_id", "prompt_id", "source", "split", "weight", "margin"]]
            run.log_table("preference_dataset", flat)
            run.log_dataset(flat, name=f"preference_dataset[{context.partition_key}]", context="training")
    context.add_output_metadata({
        "n_rows": len(ds), "by_source": MetadataValue.json(result.counts), "by_split": MetadataValue.json(splits),
        "conflicts": MetadataValue.json(dict(result.conflicts)), "dropped": MetadataValue.json(dict(result.dropped)),
        "blend": MetadataValue.json(blend.model_dump()),
        "preview": MetadataValue.md(markdown_table(ds[["pair_id", "source", "split", "weight", "margin"]])
                                    if len(ds) else "empty"),
        **run.metadata(),
    })
    return ds
