"""`alignment-dagster init-stores`: what the demo and `make dev` share under one storage root, made ready.

* The Dagster instance's `dagster.yaml`: the run queue (two runs at a time, the `training` pool one at a
  time), and PostgreSQL storage when ALIGNMENT_DAGSTER_POSTGRES_URL is set. SQLite is the default, nothing
  to configure; but SQLite has one writer, so several runs at once (a sensor requesting a partition per
  blend, a backfill) queue on its lock or fail. Teams put both stores on PostgreSQL:
  ALIGNMENT_DAGSTER_POSTGRES_URL and ALIGNMENT_MLFLOW_URI (`postgresql://user@host:5432/dbname`, the password
  in PGPASSWORD or ~/.pgpass, never in the URL).
* Both schemas created or migrated, and the MLflow experiment created, once, before runs race to do it
  (`dagster instance migrate` and `mlflow db upgrade` in one step).
* The watched constitutions folder `<root>/constitutions`, seeded with the starter the demo begins with, so
  a daemon started after the demo sees the same files (and finds the demo's run keys taken).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from alignment_dagster.core.redaction import redact_url
from alignment_dagster.core.settings import DAGSTER_POSTGRES_ENV, PROJECT_ROOT, Settings

SEED_CONSTITUTION = "constitutional-ai.yaml"  # the starter a new root's constitutions folder begins with

MANAGED = "# written by alignment-dagster (cli/stores.py); drop this line to edit it by hand\n"
# Runs are queued: two at a time, and the `training` pool (reward_model, dpo_policy) one at a time, so an
# edit that touches many partitions does not start a dozen trainings on a 2-core machine.
RUN_QUEUE_YAML = """concurrency:
  runs:
    max_concurrent_runs: 2
  pools:
    default_limit: 1
telemetry:
  enabled: false
"""
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
    """DAGSTER_HOME/dagster.yaml for `settings`: the run queue, plus PostgreSQL storage when
    ALIGNMENT_DAGSTER_POSTGRES_URL is set (SQLite otherwise); a dagster.yaml written by hand is left as it
    is. Says which storage it is. The URL holds no password (`Settings` refuses one): libpq reads PGPASSWORD
    or ~/.pgpass at run time."""
    path = home / "dagster.yaml"
    if path.is_file() and not path.read_text().startswith(MANAGED):
        return f"as configured in {path}"
    home.mkdir(parents=True, exist_ok=True)
    text, where = MANAGED + RUN_QUEUE_YAML, f"sqlite in {home}"
    if settings.dagster_postgres_url:
        url = dagster_postgres_url(settings.dagster_postgres_url)
        text += POSTGRES_YAML.format(url=json.dumps(url))
        where = f"postgres {redact_url(settings.dagster_postgres_url)}"
    path.write_text(text)
    return where


POOLS = ("training",)  # the `pool=` of the training assets (reward_model, dpo_policy, sft_policy)


def prepare_stores(home: Path, settings: Settings) -> dict[str, str]:
    """Write the instance's dagster.yaml; create or migrate the Dagster and MLflow schemas, the experiment."""
    from dagster import DagsterInstance

    from alignment_dagster.resources.tracking import MLflowTracking

    dagster = write_instance_yaml(home, settings)
    with DagsterInstance.from_config(str(home)) as instance:
        instance.upgrade()
        # Runs that start together would each create a pool's limit on first use and collide on
        # PostgreSQL's unique key: create them once, here.
        for pool in POOLS:
            instance.event_log_storage.initialize_concurrency_limit_to_default(pool)
    tracking = MLflowTracking(tracking_uri=settings.mlflow_uri, artifact_location=settings.mlflow_artifacts)
    tracking.experiment_id()
    return {"dagster": dagster, "mlflow": redact_url(settings.mlflow_uri)}


def ensure_root(root: Path, settings: Settings) -> tuple[Path, Path]:
    """(DAGSTER_HOME, constitutions folder) under `root`, created when missing (files there are kept), and
    the instance's dagster.yaml."""
    folder = root / "constitutions"
    folder.mkdir(parents=True, exist_ok=True)
    if not any(folder.glob("*.yaml")):
        shutil.copy(PROJECT_ROOT / "constitutions" / SEED_CONSTITUTION, folder / SEED_CONSTITUTION)
    home = root / "dagster_home"
    write_instance_yaml(home, settings)
    return home, folder


def run(args: argparse.Namespace) -> int:
    root = Path(args.root).expanduser().resolve()
    settings = Settings.from_env({**os.environ, "ALIGNMENT_ROOT": str(root)})
    home, folder = ensure_root(root, settings)
    if args.home:
        home = Path(args.home).expanduser().resolve()
    for store, where in prepare_stores(home, settings).items():
        print(f"[init-stores] {store}: {where}")
    print(f"[init-stores] DAGSTER_HOME={home}\n[init-stores] ALIGNMENT_CONSTITUTIONS_DIR={folder}")
    return 0
