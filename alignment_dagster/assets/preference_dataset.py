"""`preference_dataset`: AI and human labels blended into TRL-ready rows, per constitution x blend."""

import pandas as pd
from dagster import (
    AssetExecutionContext,
    AssetIn,
    Failure,
    MetadataValue,
    MultiToSingleDimensionPartitionMapping,
    asset,
)

from alignment_dagster.assets.judge_signal import gate_metadata
from alignment_dagster.core.reporting import markdown_table
from alignment_dagster.data.blending import blend_preferences
from alignment_dagster.human.agreement import aggregate_labels
from alignment_dagster.judge.gate import gate_for_version
from alignment_dagster.partitions import constitution_blend_partitions
from alignment_dagster.resources.libraries import BlendLibrary
from alignment_dagster.resources.tracking import MLflowTracking
from alignment_dagster.specs.constitution import Constitution

BY_CONSTITUTION = MultiToSingleDimensionPartitionMapping(partition_dimension_name="constitution")


@asset(
    partitions_def=constitution_blend_partitions,
    ins={
        "ai_preferences": AssetIn(partition_mapping=BY_CONSTITUTION),
        "human_labels": AssetIn(partition_mapping=BY_CONSTITUTION),
        "constitution": AssetIn(partition_mapping=BY_CONSTITUTION),
        "edge_cases": AssetIn(partition_mapping=BY_CONSTITUTION),
        "response_pairs": AssetIn(),
        "known_labels": AssetIn(),
    },
    group_name="training",
    kinds={"parquet"},
)
def preference_dataset(
    context: AssetExecutionContext,
    ai_preferences: pd.DataFrame,
    human_labels: pd.DataFrame,
    constitution: dict,
    edge_cases: pd.DataFrame,
    response_pairs: pd.DataFrame,
    known_labels: pd.DataFrame,
    blend_library: BlendLibrary,
    mlflow: MLflowTracking,
) -> pd.DataFrame:
    """Blend AI and human labels by the blend's rules into prompt/chosen/rejected rows (no model calls); AI-sourced
    blends are refused while the judge signal gate fails for the constitution version."""
    keys = context.partition_key.keys_by_dimension
    source, _, blend = blend_library.find(keys["blend"])
    settings = Constitution.model_validate(constitution["constitution"]).judge.gate
    gate = gate_for_version(
        ai_preferences,
        edge_cases,
        human_labels,
        known_labels,
        settings.alpha,
        settings.min_n,
        constitution_override=settings.override,
        blend_override=blend.judge_gate_override,
    )
    gate_tags = {
        "judge_gate.verdict": gate.verdict,
        "judge_gate.blocked": str(blend.uses_ai and gate.blocks_ai_labels).lower(),
    }
    if gate.override and gate.verdict == "fail":
        gate_tags["judge_gate.override_source"] = gate.override_source
    gate_metrics = {f"judge_gate.{k}": v for k, v in gate.metrics().items()}
    if blend.uses_ai and gate.blocks_ai_labels:
        with mlflow.asset_run(
            context, tags={"blend.name": blend.name, "blend.hash": blend.content_hash, **gate_tags}
        ) as run:
            run.set_tags({"judge_gate.reason": gate.reason[:4000]})
            run.log_metrics(gate_metrics)
            # Raised inside the run: MLflow marks it FAILED with the reason in its tags.
            raise Failure(
                description=f"blend {blend.name!r} uses AI labels, blocked by the judge signal gate: {gate.reason}",
                metadata={**{f"judge_gate_{k}": v for k, v in gate_metadata(gate).items()}, **run.metadata()},
            )
    human = (
        aggregate_labels(human_labels) if len(human_labels) else pd.DataFrame(columns=["pair_id", "choice"])
    )
    result = blend_preferences(response_pairs, ai_preferences, human, blend)
    ds = result.dataset
    splits = {str(k): int(v) for k, v in ds["split"].value_counts().items()} if len(ds) else {}
    with mlflow.asset_run(
        context, tags={"blend.name": blend.name, "blend.hash": blend.content_hash, **gate_tags}
    ) as run:
        run.log_params(
            {
                "blend": blend.model_dump(),
                "blend.source": source,
                **({"judge_gate.override": gate.override} if gate.override else {}),
            }
        )
        run.log_metrics(
            {
                **gate_metrics,
                "n_rows": len(ds),
                **{f"source.{k}": v for k, v in result.counts.items()},
                **{f"conflicts.{k}": v for k, v in result.conflicts.items()},
                **{f"dropped.{k}": v for k, v in result.dropped.items()},
                **{f"split.{k}": v for k, v in splits.items()},
            }
        )
        if len(ds):
            flat = ds[["pair_id", "prompt_id", "source", "split", "weight", "margin"]]
            run.log_table("preference_dataset", flat)
            run.log_dataset(flat, name=f"preference_dataset[{context.partition_key}]", context="training")
    context.add_output_metadata(
        {
            "n_rows": len(ds),
            "by_source": MetadataValue.json(result.counts),
            "by_split": MetadataValue.json(splits),
            "conflicts": MetadataValue.json(dict(result.conflicts)),
            "dropped": MetadataValue.json(dict(result.dropped)),
            "blend": MetadataValue.json(blend.model_dump()),
            "judge_gate": MetadataValue.json(gate_metadata(gate)),
            "preview": MetadataValue.md(
                markdown_table(ds[["pair_id", "source", "split", "weight", "margin"]]) if len(ds) else "empty"
            ),
            **run.metadata(),
        }
    )
    return ds
