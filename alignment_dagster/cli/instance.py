"""What the demo and `make dev` share under one storage root: the Dagster instance (its `dagster.yaml`,
written once) and the watched constitutions folder (`<root>/constitutions`, seeded with the starter the demo
begins with), so a daemon started after the demo sees the same files and launches nothing twice.

Runs are queued: at most two at a time, and the `training` pool (reward_model, dpo_policy) one at a time, so
an edit that touches many partitions does not start a dozen trainings on a 2-core machine.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from alignment_dagster.core.settings import PROJECT_ROOT

SEED_CONSTITUTION = "constitutional-ai.yaml"  # the starter a new root's constitutions folder begins with

INSTANCE_YAML = """\
# Written by alignment-dagster (cli/instance.py). Runs are queued: two at a time, training one at a time.
concurrency:
  runs:
    max_concurrent_runs: 2
  pools:
    default_limit: 1
telemetry:
  enabled: false
"""


def ensure_instance(home: Path) -> Path:
    """`home` with a `dagster.yaml` (a hand-edited one is left as it is)."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(INSTANCE_YAML)
    return home


def ensure_root(root: Path) -> tuple[Path, Path]:
    """(DAGSTER_HOME, constitutions folder) under `root`, created when missing; files there are kept."""
    folder = root / "constitutions"
    folder.mkdir(parents=True, exist_ok=True)
    if not any(folder.glob("*.yaml")):
        shutil.copy(PROJECT_ROOT / "constitutions" / SEED_CONSTITUTION, folder / SEED_CONSTITUTION)
    return ensure_instance(root / "dagster_home"), folder
