"""Deployment settings read from the environment, in one place.

Local by default (storage and MLflow under `.alignment/` in the repo); set ALIGNMENT_ROOT to an
`s3://bucket/prefix` URI (and ALIGNMENT_S3_ENDPOINT_URL for S3-compatible stores) for production.

Settings become resource configuration, which Dagster stores with every run and shows in its UI, so a
URL setting with credentials in it (`https://user:pw@host`, `?api_key=...`) is refused, naming its variable
and not its value: keys and tokens live in the variables `*_API_KEY_ENV` and `*_TOKEN_ENV` name. The one
exception is ALIGNMENT_MLFLOW_URI (a database URI needs its password): `definitions.build_resources` passes
it as a Dagster `EnvVar`, resolved at run time and never stored.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from alignment_dagster.core.redaction import credentials_in

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
# ComputeResource field -> variable: where heavy stages run (local, or Ray jobs at the address)
COMPUTE_ENV = {
    "kind": "ALIGNMENT_COMPUTE",
    "address": "ALIGNMENT_RAY_ADDRESS",
    "workers": "ALIGNMENT_RAY_WORKERS",
    "cpus_per_worker": "ALIGNMENT_RAY_CPUS_PER_WORKER",
    "gpus_per_worker": "ALIGNMENT_RAY_GPUS_PER_WORKER",
}
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
    """A database URL from `var` that is written into `dagster.yaml`, refused (by name, never echoed) when it
    carries a password: PostgreSQL clients read it from PGPASSWORD or a ~/.pgpass file."""
    value = env.get(var) or None
    if value and urlparse(value).password:
        raise ValueError(
            f"{var}: holds a password; leave it out of the URL and set PGPASSWORD (or a ~/.pgpass file)"
        )
    return value


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(s.strip() for s in (value or "").split(",") if s.strip())


# Variables whose values are URLs (or lists of them) that end up in resource configuration.
URL_VARIABLES = (
    "ALIGNMENT_ROOT",
    "ALIGNMENT_S3_ENDPOINT_URL",
    "ALIGNMENT_MLFLOW_ARTIFACTS",
    "ALIGNMENT_MLFLOW_UI_URL",
    "ALIGNMENT_CONSTITUTIONS_S3",
    "ALIGNMENT_IMPORT_PAIRS",
    "ALIGNMENT_LABEL_STUDIO_URL",
    "ALIGNMENT_POLICY_BASE_URL",
    "ALIGNMENT_JUDGE_BASE_URL",
    "ALIGNMENT_RAY_ADDRESS",
)
SECRET_HOMES = {
    "ALIGNMENT_LABEL_STUDIO_URL": "ALIGNMENT_LABEL_STUDIO_TOKEN_ENV",
    "ALIGNMENT_POLICY_BASE_URL": "ALIGNMENT_POLICY_API_KEY_ENV",
    "ALIGNMENT_JUDGE_BASE_URL": "ALIGNMENT_JUDGE_API_KEY_ENV",
    # Ray's own token file or variable (RAY_AUTH_TOKEN_PATH / RAY_AUTH_TOKEN), read by its client
    "ALIGNMENT_RAY_ADDRESS": "RAY_AUTH_TOKEN_PATH",
}


class SettingsError(ValueError):
    """A setting that cannot be used; names the variable, never its value (it may hold a secret)."""


def _refuse_credentials(env: dict[str, str]) -> None:
    for var in URL_VARIABLES:
        if credentials_in(env.get(var) or ""):
            home = SECRET_HOMES.get(var)
            where = (
                f"put it in an environment variable and name that in {home}"
                if home
                else "use the client's own credential chain (AWS_*, MLFLOW_TRACKING_USERNAME/PASSWORD)"
            )
            raise SettingsError(
                f"{var}: credentials inside the URL are refused (the value would be stored with every "
                f"run's configuration); {where}"
            )


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
    compute: dict = field(default_factory=dict)  # ComputeResource field -> value (COMPUTE_ENV)
    # The Dagster instance's storage on PostgreSQL (`cli.stores`); None: SQLite under DAGSTER_HOME.
    dagster_postgres_url: str | None = None

    @property
    def mlflow_uri_has_credentials(self) -> bool:
        return credentials_in(self.mlflow_uri)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        _refuse_credentials(env)
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
            mlflow_uri=env.get("ALIGNMENT_MLFLOW_URI") or f"sqlite:///{local_state / 'mlflow.db'}",
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
            compute=_fields(env, COMPUTE_ENV),
            dagster_postgres_url=store_url(env, DAGSTER_POSTGRES_ENV),
            import_pairs=_split(env.get("ALIGNMENT_IMPORT_PAIRS"))
            if "ALIGNMENT_IMPORT_PAIRS" in env
            else _default_imports(),
        )
