"""Deployment settings read from the environment, in one place.

Local by default (storage and MLflow under `.alignment/` in the repo); set ALIGNMENT_ROOT to an
`s3://bucket/prefix` URI (and ALIGNMENT_S3_ENDPOINT_URL for S3-compatible stores) for production.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

PROJECT_ROOT = Path(__file__).resolve().parents[2]
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


def looks_like_env_name(name: str) -> bool:
    """Upper-case letters, digits and '_', as environment variable names are by convention. A secret pasted
    where its variable's name goes (hex, a JWT, sk-...) does not look like that, and must stay out of
    messages."""
    return bool(_ENV_NAME.fullmatch(name))


def default_root() -> Path:
    # An editable install keeps data beside the checkout; an installed wheel falls back to the cwd.
    base = PROJECT_ROOT if (PROJECT_ROOT / "pyproject.toml").exists() else Path.cwd()
    return base / ".alignment"


def _default_imports() -> tuple[str, ...]:
    # Real human preferences beside a checkout (the shared HH-RLHF dev file) make the human loop runnable
    # out of the box; elsewhere nothing is imported unless ALIGNMENT_IMPORT_PAIRS names files.
    shared = PROJECT_ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-dev.jsonl.gz"
    return (str(shared),) if shared.is_file() else ()


PROFILE_ENV = {"name": "ALIGNMENT_PROFILE"}  # RunProfile field -> variable
DAGSTER_POSTGRES_ENV = "ALIGNMENT_DAGSTER_POSTGRES_URL"
LABELLING_ENV = {
    "backend": "ALIGNMENT_LABELLING",
    "label_studio_url": "ALIGNMENT_LABEL_STUDIO_URL",
    "token_env": "ALIGNMENT_LABEL_STUDIO_TOKEN_ENV",
}  # LabellingResource field -> variable


def backend_env(use: str) -> dict[str, str]:
    """Backend resource field -> variable: ALIGNMENT_<USE>_{KIND,MODEL,BASE_URL,SERVED_MODEL,API_KEY_ENV}."""
    fields = {
        "kind": "KIND",
        "model": "MODEL",
        "base_url": "BASE_URL",
        "served_model": "SERVED_MODEL",
        "api_key_env": "API_KEY_ENV",
    }
    return {f: f"ALIGNMENT_{use}_{suffix}" for f, suffix in fields.items()}


def _fields(env: dict[str, str], names: dict[str, str]) -> dict:
    return {f: env[var] for f, var in names.items() if env.get(var)}


def _backend(env: dict[str, str], use: str) -> dict:
    return _fields(env, backend_env(use))


def store_url(env: dict[str, str], var: str) -> str | None:
    """A database or server URL from `var`, refused (by name, never echoed) when it carries a password:
    resource settings are kept in Dagster's run storage. PostgreSQL clients read the password from
    PGPASSWORD or a ~/.pgpass file, an MLflow server's from MLFLOW_TRACKING_PASSWORD."""
    value = env.get(var) or None
    if value and urlparse(value).password:
        raise ValueError(
            f"{var}: holds a password; leave it out of the URL and set PGPASSWORD (or a ~/.pgpass file) "
            "for PostgreSQL, MLFLOW_TRACKING_PASSWORD for an MLflow server"
        )
    return value


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(s.strip() for s in (value or "").split(",") if s.strip())


@dataclass(frozen=True)
class Settings:
    root: str
    mlflow_uri: str
    mlflow_artifacts: str
    mlflow_ui_url: str
    constitutions_dir: str
    constitutions_s3_uri: str | None
    blends_dir: str
    s3_endpoint_url: str | None
    s3_region: str | None
    import_pairs: tuple[str, ...]
    policy_backend: dict
    judge_backend: dict
    labelling: dict
    profile: dict  # RunProfile field -> value: {'name': ALIGNMENT_PROFILE} when set
    # The Dagster instance's storage on PostgreSQL (`cli.stores`); None: SQLite under DAGSTER_HOME.
    dagster_postgres_url: str | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        root = env.get("ALIGNMENT_ROOT") or str(default_root())
        local_state = Path(root) if not root.startswith("s3://") else default_root()
        if not root.startswith("s3://"):
            root = str(Path(root).expanduser().resolve())
            local_state = Path(root)
        artifacts = env.get("ALIGNMENT_MLFLOW_ARTIFACTS") or (
            f"{root.rstrip('/')}/mlartifacts"
            if root.startswith("s3://")
            else str(local_state / "mlartifacts")
        )
        return cls(
            root=root,
            mlflow_uri=store_url(env, "ALIGNMENT_MLFLOW_URI") or f"sqlite:///{local_state / 'mlflow.db'}",
            mlflow_artifacts=artifacts,
            mlflow_ui_url=env.get("ALIGNMENT_MLFLOW_UI_URL", "http://127.0.0.1:5000"),
            constitutions_dir=env.get("ALIGNMENT_CONSTITUTIONS_DIR") or str(PROJECT_ROOT / "constitutions"),
            constitutions_s3_uri=env.get("ALIGNMENT_CONSTITUTIONS_S3") or None,
            blends_dir=env.get("ALIGNMENT_BLENDS_DIR") or str(PROJECT_ROOT / "blends"),
            s3_endpoint_url=env.get("ALIGNMENT_S3_ENDPOINT_URL") or None,
            s3_region=env.get("ALIGNMENT_S3_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            policy_backend=_backend(env, "POLICY"),
            judge_backend=_backend(env, "JUDGE"),
            labelling=_fields(env, LABELLING_ENV),
            profile=_fields(env, PROFILE_ENV),
            dagster_postgres_url=store_url(env, DAGSTER_POSTGRES_ENV),
            import_pairs=_split(env.get("ALIGNMENT_IMPORT_PAIRS"))
            if "ALIGNMENT_IMPORT_PAIRS" in env
            else _default_imports(),
        )
