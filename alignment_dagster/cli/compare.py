"""`alignment-dagster compare`: the comparison table (and plot) of the newest evals runs, from MLflow."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from alignment_dagster.core.redaction import redact_url


def missing_store(uri: str) -> str | None:
    """Why a local store cannot be read, or None: MLflow would create an empty SQLite file (or folder)
    there, and report that no runs exist in a store that is only misnamed."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        return None if db.is_file() else f"no MLflow store at {db} (check --root / --tracking-uri)"
    if "://" not in uri or uri.startswith("file://"):
        folder = Path(uri.removeprefix("file://"))
        return None if folder.is_dir() else f"no MLflow store at {folder} (check --root / --tracking-uri)"
    return None


def run(args: argparse.Namespace) -> int:
    from mlflow.tracking import MlflowClient

    from alignment_dagster.core.settings import Settings
    from alignment_dagster.evaluation.side_by_side import (
        comparison_plot,
        comparison_table,
        format_table,
        latest_eval_runs,
    )
    from alignment_dagster.resources.tracking import RedactingClient

    if args.root:
        root = Path(args.root).expanduser().resolve()
        if not root.is_dir():
            print(f"--root {root}: no such folder (nothing is created to read from)", file=sys.stderr)
            return 1
        os.environ["ALIGNMENT_ROOT"] = str(root)
    settings = Settings.from_env()
    uri = args.tracking_uri or settings.mlflow_uri
    missing = missing_store(uri)
    if missing:
        print(missing, file=sys.stderr)
        return 1
    client = RedactingClient(MlflowClient(tracking_uri=uri))
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
