"""`evals` (constitution x blend): the trained policy against its base model, and `comparison` across partitions.

The logic lives in alignment_dagster/evaluation.py and alignment_dagster/comparison.py; this module wires
the stored assets, the model resources and MLflow together.
"""

import pandas as pd
from dagster import (
    AllPartitionMapping,
    AssetDep,
    AssetExecutionContext,
    MetadataValue,
    asset,
)

from alignment_dagster.core.reporting import markdown_table, png_markdown
from alignment_dagster.evaluation.side_by_side import (
    KEY_COLUMNS,
    comparison_plot,
    comparison_table,
    format_table,
    latest_eval_runs,
)
from alignment_dagster.resources.tracking import MLflowTracking


@asset(
    deps=[AssetDep("evals", partition_mapping=AllPartitionMapping())],
    group_name="evals",
    kinds={"mlflow"},
)
def comparison(context: AssetExecutionContext, mlflow: MLflowTracking) -> pd.DataFrame:
    """Key eval metrics over constitution versions x blends, from the newest finished evals run of each
    partition in MLflow; best per metric marked."""
    runs = latest_eval_runs(mlflow.client, mlflow.experiment_id())
    table = comparison_table(runs)
    shown = format_table(table)
    text = markdown_table(shown, max_rows=len(shown), max_chars=40)
    png = comparison_plot(table) if len(table) else None
    with mlflow.asset_run(context) as run:
        run.log_table("comparison", table)
        run.log_text("comparison.md", f"## evals comparison (* = best)\n\n{text}\n")
        if png:
            run.log_figure("comparison", png)
        run.log_metrics({"partitions": len(table)})
    context.add_output_metadata(
        {
            "partitions": len(table),
            "table": MetadataValue.md(text),
            **({"plot": MetadataValue.md(png_markdown(png, "evals comparison"))} if png else {}),
            "columns": MetadataValue.json({col.label: col.metric for col in KEY_COLUMNS}),
            **run.metadata(),
        }
    )
    return table
