"""Metadata-store settings: SQLite by default, PostgreSQL by URL, never a password in a URL (resource
settings are kept in Dagster's run storage), and the instance's dagster.yaml naming the variable only."""

from pathlib import Path

import pytest

from alignment_dagster.cli.stores import dagster_postgres_url, write_instance_yaml
from alignment_dagster.core.db_lock import store_lock
from alignment_dagster.core.settings import Settings


def test_a_password_in_the_dagster_store_url_is_refused_without_echoing_it(tmp_path: Path) -> None:
    var = "ALIGNMENT_DAGSTER_POSTGRES_URL"  # written into dagster.yaml: libpq reads the password itself
    env = {"ALIGNMENT_ROOT": str(tmp_path), var: "postgresql://u:hunter2-secret@127.0.0.1:5432/db"}
    with pytest.raises(ValueError, match=f"^{var}: holds a password; .*PGPASSWORD") as err:
        Settings.from_env(env)
    assert "hunter2" not in str(err.value)
    ok = Settings.from_env({**env, var: "postgresql://u@127.0.0.1:5432/db"})
    assert ok.dagster_postgres_url == "postgresql://u@127.0.0.1:5432/db"


def test_an_mlflow_store_url_with_a_password_reaches_the_resource_as_its_variable(tmp_path: Path) -> None:
    from dagster import EnvVar

    from alignment_dagster.definitions import build_resources

    url = "postgresql://u:hunter2-secret@127.0.0.1:5432/db"
    env = {"ALIGNMENT_ROOT": str(tmp_path), "ALIGNMENT_MLFLOW_URI": url}
    settings = Settings.from_env(env)
    assert settings.mlflow_uri == url and settings.mlflow_uri_has_credentials
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALIGNMENT_MLFLOW_URI", url)
        tracking = build_resources(settings)["mlflow"]
    assert tracking.tracking_uri == EnvVar("ALIGNMENT_MLFLOW_URI")  # the name is stored, not the value


def test_instance_yaml_follows_the_setting(tmp_path: Path) -> None:
    home, url = tmp_path / "home", "postgresql://dagster@127.0.0.1:5432/dagster"
    sqlite = Settings.from_env({"ALIGNMENT_ROOT": str(tmp_path)})
    assert sqlite.dagster_postgres_url is None and sqlite.mlflow_uri.startswith("sqlite:///")
    assert write_instance_yaml(home, sqlite) == f"sqlite in {home}"
    queue_only = (home / "dagster.yaml").read_text()
    assert "max_concurrent_runs: 2" in queue_only and "default_limit: 1" in queue_only  # the run queue
    assert "postgres" not in queue_only

    pg = Settings.from_env({"ALIGNMENT_ROOT": str(tmp_path), "ALIGNMENT_DAGSTER_POSTGRES_URL": url})
    assert write_instance_yaml(home, pg) == "postgres postgresql://<redacted>@127.0.0.1:5432/dagster"
    # dagster-postgres speaks psycopg2's SQL: the driver is named (SQLAlchemy 2.1 would pick psycopg 3).
    assert (
        'postgres_url: "postgresql+psycopg2://dagster@127.0.0.1:5432/dagster"'
        in (home / "dagster.yaml").read_text()
    )
    assert "max_concurrent_runs: 2" in (home / "dagster.yaml").read_text()
    assert write_instance_yaml(home, sqlite) == f"sqlite in {home}"
    assert (home / "dagster.yaml").read_text() == queue_only  # the variable unset: back to the default

    (home / "dagster.yaml").write_text("run_launcher: {}\n")  # someone's own instance config stays
    assert write_instance_yaml(home, pg) == f"as configured in {home / 'dagster.yaml'}"
    assert (home / "dagster.yaml").read_text() == "run_launcher: {}\n"


def test_store_locks_by_kind(tmp_path: Path) -> None:
    from filelock import FileLock

    assert isinstance(store_lock(f"sqlite:///{tmp_path}/m.db", "x"), FileLock)
    assert store_lock("http://127.0.0.1:5000", "x") is None  # over HTTP there is no file or session to lock


def test_the_dagster_url_must_be_postgresql() -> None:
    assert dagster_postgres_url("postgresql+psycopg2://d@h:1/x") == "postgresql+psycopg2://d@h:1/x"
    with pytest.raises(ValueError, match="^ALIGNMENT_DAGSTER_POSTGRES_URL: expected postgresql://"):
        dagster_postgres_url("mysql://d@h/x")
