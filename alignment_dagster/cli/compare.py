"""`alignment-dagster compare`: the comparison table (and plot) of the newest evals runs, from MLflow."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from alignment_dagster.core.redaction import redact_url


def run(args: argparse.Namespace) -> int:
    from mlflow.tracking import MlflowClient

    from alignment_dagster.core.settings import Settings
    from alignment_dagster.evaluation.side_by_side import (
        comparison_plot,
        comparison_table,
        format_table,
        latest_eval_runs,
    )

    if args.root:
        os.environ["ALIGNMENT_ROOT"] = str(Path(args.root).expanduser().resolve())
    settings = Settings.from_env()
    uri = args.tracking_uri or settings.mlflow_uri
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        print(
            f"no MLflow experiment {args.experiment!r} at {redact_url(uri)}; run the pipeline "
            "(or `alignment-dagster demo`) first",
            file=sys.stderr,
        )
        return 1
    table = comparison_table(latest_eval_runs(client, experiment.experiment_id))
    if table.empty:
        print(
            f"no finished evals runs in experiment {args.experiment!r} at {redact_url(uri)}", file=sys.stderr
        )
        return 1
    print(format_table(table).to_string(index=False))
    if args.csv:
        table.to_csv(args.csv, index=False)
        print(f"table: {args.csv}")
    if args.plot:
        Path(args.plot).write_bytes(comparison_plot(table))
        print(f"plot:  {args.plot}")
    return 0
