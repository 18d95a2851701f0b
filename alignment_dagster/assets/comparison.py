"""`comparison`: key eval metrics over constitution versions x blends, read back from MLflow."""

import pandas as pd
from dagster import AllPartitionMapping, AssetDep, AssetExecutionContext, asset

from alignment_dagster.evaluation.side_by_side import comparison_report, comparison_table, latest_eval_runs
from alignment_dagster.resources.tracking import MLflowTracking


@asset(
    deps=[AssetDep("evals", partition_mapping=AllPartitionMapping())], group_name="evals", kinds={"mlflow"}
)
def comparison(context: AssetExecutionContext, mlflow: MLflowTracking) -> pd.DataFrame:
    """Key eval metrics over constitution versions x blends, from the newest finished evals run of each
    partition in MLflow; best per metric marked."""
    table = comparison_table(latest_eval_runs(mlflow.client, mlflow.experiment_id()))
    context.add_output_metadata(mlflow.record(context, comparison_report(table)))
    return table
