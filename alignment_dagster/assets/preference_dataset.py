"""`preference_dataset`: AI, human and known labels blended into TRL-ready rows, per constitution x blend."""

import pandas as pd
from dagster import AssetDep, AssetExecutionContext, AssetIn, DataVersion, Failure, Output, asset

from alignment_dagster.automation import refresh_eagerly
from alignment_dagster.partitions import BY_BLEND, BY_CONSTITUTION, constitution_blend_partitions
from alignment_dagster.resources.storage_io import StorageResource
from alignment_dagster.resources.tracking import MLflowTracking
from alignment_dagster.specs.blend import BlendVersion
from alignment_dagster.specs.constitution import ConstitutionVersion
from alignment_dagster.training.preference_data import build_preference_dataset


@asset(
    partitions_def=constitution_blend_partitions,
    ins={
        "ai_preferences": AssetIn(partition_mapping=BY_CONSTITUTION),
        "human_labels": AssetIn(partition_mapping=BY_CONSTITUTION),
        "constitution": AssetIn(partition_mapping=BY_CONSTITUTION),
        "edge_cases": AssetIn(partition_mapping=BY_CONSTITUTION),
        "blend": AssetIn(partition_mapping=BY_BLEND),
        "response_pairs": AssetIn(),
        "known_labels": AssetIn(),
    },
    # Revision pairs (Constitutional AI phase 1) are read from storage only by blends that take them
    # (`revision_weight` > 0): not an input, so the other blends never wait for phase 1.
    deps=[AssetDep("sft_dataset", partition_mapping=BY_CONSTITUTION)],
    group_name="training",
    kinds={"parquet"},
    automation_condition=refresh_eagerly(optional="sft_dataset"),
)
def preference_dataset(
    context: AssetExecutionContext,
    ai_preferences: pd.DataFrame,
    human_labels: pd.DataFrame,
    constitution: ConstitutionVersion,
    edge_cases: pd.DataFrame,
    blend: BlendVersion,
    response_pairs: pd.DataFrame,
    known_labels: pd.DataFrame,
    storage: StorageResource,
    mlflow: MLflowTracking,
) -> Output[pd.DataFrame]:
    """Blend AI, human and known labels (and accepted revisions, where the blend asks) by the blend's rules
    into prompt/chosen/rejected rows (no model calls); AI-sourced blends are refused while the judge signal
    gate fails for the constitution version (or the length-bias check, where the constitution sets
    `judge.length_bias.block_ai_labels`)."""
    revisions = (
        storage.stored_table("sft_dataset", constitution.partition_key)
        if blend.spec.revision_weight > 0
        else None
    )
    data = build_preference_dataset(
        response_pairs,
        ai_preferences,
        human_labels,
        edge_cases,
        known_labels,
        constitution.spec,
        blend.spec,
        blend.source,
        revisions,
    )
    report = data.report()
    with mlflow.asset_run(context, tags=report.tags) as run:
        meta = run.report(report)
        if data.result is None:  # raised inside the run: MLflow marks it FAILED with the reason in its tags
            raise Failure(
                description=data.refusal(),
                metadata={
                    **{f"judge_gate_{k}": v for k, v in data.gate.metadata().items()},
                    **{
                        f"length_bias_{k}": v
                        for k, v in (data.length.metadata() if data.length else {}).items()
                    },
                    **run.metadata(),
                },
            )
    return Output(data.result.dataset, data_version=DataVersion(data.version), metadata=meta)
