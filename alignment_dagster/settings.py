"""Deployment settings read from the environment, in one place.

Local by default (storage and MLflow under `.alignment/` in the repo); set ALIGNMENT_ROOT to an
`s3://bucket/prefix` URI (and ALIGNMENT_S3_ENDPOINT_URL for S3-compatible stores) for production.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _local_default_root() -> Path:
    # An editable install keeps data beside the checkout; an installed wheel falls back to the cwd.
    base = PROJECT_ROOT if (PROJECT_ROOT / "pyproject.toml").exists() else Path.cwd()
    return base / ".alignment"


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
    prompt_sources: tuple[str, ...]

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        root = env.get("ALIGNMENT_ROOT") or str(_local_default_root())
        local_state = Path(root) if not root.startswith("s3://") else _local_default_root()
        if not root.startswith("s3://"):
            root = str(Path(root).expanduser().resolve())
            local_state = Path(root)
        artifacts = env.get("ALIGNMENT_MLFLOW_ARTIFACTS") or (
            f"{root.rstrip('/')}/mlartifacts" if root.startswith("s3://") else str(local_state / "mlartifacts")
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
            prompt_sources=_split(env.get("ALIGNMENT_PROMPT_SOURCES")),
        )
