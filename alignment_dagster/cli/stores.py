"""`alignment-dagster init-stores`: the Dagster instance and the MLflow tracking store, set up for runs.

SQLite by default (the instance under DAGSTER_HOME, MLflow's `mlflow.db` under the storage root), nothing to
configure; but SQLite has one writer, so several runs at once (a sensor requesting a partition per blend, a
backfill) queue on its lock or fail. Teams put both on PostgreSQL: ALIGNMENT_DAGSTER_POSTGRES_URL and
ALIGNMENT_MLFLOW_URI (`postgresql://user@host:5432/dbname`, the password in PGPASSWORD or ~/.pgpass, never
in the URL). This writes DAGSTER_HOME/dagster.yaml with PostgreSQL storage, creates or migrates both
schemas, and creates the MLflow experiment, once, before runs race to do it (`dagster instance migrate` and
`mlflow db upgrade` in one step).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from alignment_dagster.core.redaction import redact_url
from alignment_dagster.core.settings import DAGSTER_POSTGRES_ENV, Settings

MANAGED = (
    f"# written by `alignment-dagster init-stores` from {DAGSTER_POSTGRES_ENV}; drop this line to edit\n"
)
POSTGRES_YAML = """storage:
  postgres:
    postgres_url: {url}
"""


def dagster_postgres_url(url: str) -> str:
    """The URL with the psycopg2 driver named: dagster-postgres's SQL is psycopg2's (SQLAlchemy 2.1 would
    pick psycopg 3 for a bare `postgresql://`, and its NOTIFY statements then fail)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgresql", "postgresql+psycopg2", "postgres"):
        raise ValueError(f"{DAGSTER_POSTGRES_ENV}: expected postgresql://user@host:port/db")
    return f"postgresql+psycopg2://{rest}"


def write_instance_yaml(home: Path, settings: Settings) -> str:
    """DAGSTER_HOME/dagster.yaml for `settings`: PostgreSQL storage when ALIGNMENT_DAGSTER_POSTGRES_URL is
    set, none (SQLite) otherwise; a dagster.yaml written by hand is left as it is. Says which it is. The URL
    holds no password (`Settings` refuses one): libpq reads PGPASSWORD or ~/.pgpass at run time."""
    path = home / "dagster.yaml"
    ours = path.is_file() and path.read_text().startswith(MANAGED)
    if path.is_file() and not ours:
        return f"as configured in {path}"
    if settings.dagster_postgres_url:
        home.mkdir(parents=True, exist_ok=True)
        url = dagster_postgres_url(settings.dagster_postgres_url)
        path.write_text(MANAGED + POSTGRES_YAML.format(url=json.dumps(url)))
        return f"postgres {redact_url(settings.dagster_postgres_url)}"
    if ours:
        path.unlink()  # the variable was unset: back to the default
    return f"sqlite in {home}"


def prepare_stores(home: Path, settings: Settings) -> dict[str, str]:
    """Write the instance's dagster.yaml; create or migrate the Dagster and MLflow schemas, the experiment."""
    from dagster import DagsterInstance

    from alignment_dagster.resources.tracking import MLflowTracking

    dagster = write_instance_yaml(home, settings)
    with DagsterInstance.from_config(str(home)) as instance:
        instance.upgrade()
    tracking = MLflowTracking(tracking_uri=settings.mlflow_uri, artifact_location=settings.mlflow_artifacts)
    tracking.experiment_id()
    return {"dagster": dagster, "mlflow": redact_url(settings.mlflow_uri)}


def run(args: argparse.Namespace) -> int:
    home = Path(args.home or os.environ.get("DAGSTER_HOME") or "").expanduser()
    if not str(home) or str(home) == ".":
        print("init-stores: give --home or set DAGSTER_HOME", flush=True)
        return 2
    for store, where in prepare_stores(home.resolve(), Settings.from_env()).items():
        print(f"[init-stores] {store}: {where}")
    return 0
