"""`human_labels`: edge cases sent to the labelling backend, labels collected, agreement and calibration."""

import pandas as pd
from dagster import AssetExecutionContext, asset

from alignment_dagster.human.collection import collect_labels, labels_for_version, pooled_labels
from alignment_dagster.partitions import constitution_partitions
from alignment_dagster.resources.labelling import LabellingResource
from alignment_dagster.resources.storage_io import StorageResource
from alignment_dagster.resources.tracking import MLflowTracking
from alignment_dagster.specs.constitution import ConstitutionVersion


@asset(partitions_def=constitution_partitions, group_name="human", kinds={"parquet"})
def human_labels(
    context: AssetExecutionContext,
    constitution: ConstitutionVersion,
    edge_cases: pd.DataFrame,
    ai_preferences: pd.DataFrame,
    response_pairs: pd.DataFrame,
    known_labels: pd.DataFrame,
    labelling: LabellingResource,
    storage: StorageResource,
    mlflow: MLflowTracking,
) -> pd.DataFrame:
    """Human labels for this version's edge cases (plus reused earlier ones), agreement and calibration."""
    key = context.partition_key
    tasks = edge_cases.merge(response_pairs[["pair_id", "prompt", "response_a", "response_b"]], on="pair_id")
    principles = [p.text for p in constitution.spec.principles]
    collected = collect_labels(labelling.target(), key, principles, tasks, known_labels, storage.open())
    earlier = pooled_labels(storage.other_partitions("human_labels", key).values())
    version = labels_for_version(collected, earlier, ai_preferences, edge_cases, key)
    context.add_output_metadata(
        mlflow.record(context, version.report(constitution.content_hash, labelling.backend))
    )
    return version.labels
