"""`comparison`: key eval metrics over constitution versions x blends, read back from MLflow."""

import pandas as pd
from dagster import AllPartitionMapping, AssetDep, AssetExecutionContext, asset

from alignment_dagster.automation import compare_when_evals_finish
from alignment_dagster.evaluation.side_by_side import (
    comparison_report,
    comparison_table,
    latest_eval_runs,
    version_changes,
)
from alignment_dagster.partitions import constitution_partitions
from alignment_dagster.resources.storage_io import StorageResource
from alignment_dagster.resources.tracking import MLflowTracking
from alignment_dagster.specs.constitution import ConstitutionVersion


@asset(
    deps=[
        AssetDep("evals", partition_mapping=AllPartitionMapping()),
        AssetDep("sft_evals", partition_mapping=AllPartitionMapping()),
    ],
    group_name="evals",
    kinds={"mlflow"},
    automation_condition=compare_when_evals_finish(),
)
def comparison(
    context: AssetExecutionContext, storage: StorageResource, mlflow: MLflowTracking
) -> pd.DataFrame:
    """Key eval metrics over constitution versions x blends, from the newest finished evals run of each
    partition in MLflow (best per metric marked, stale models flagged), a row per constitution version for
    its SFT policy (`sft_evals`, blend `sft_policy`), and what changed between versions."""
    table = comparison_table(latest_eval_runs(mlflow.client, mlflow.experiment_id()))
    stored = storage.stored_documents("constitution", ConstitutionVersion)
    order = [k for k in context.instance.get_dynamic_partitions(constitution_partitions.name) if k in stored]
    changes = version_changes([stored[k] for k in order])
    context.add_output_metadata(mlflow.record(context, comparison_report(table, changes)))
    return table
