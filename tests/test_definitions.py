"""Definitions load; settings errors name their variable; the demo's root default (the demo itself:
tests/cli/test_demo.py)."""

import subprocess
import sys
from pathlib import Path

import pytest
from dagster import Definitions

from alignment_dagster.core.settings import Settings
from alignment_dagster.definitions import build_definitions, build_resources
from tests.conftest import REPO


def test_definitions_load(settings: Settings) -> None:
    defs = build_definitions(settings)
    Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"prompt_pool", "constitution"} <= keys
    assert defs.resolve_sensor_def("constitution_sensor").job_name == "constitution_pipeline"
    assert set(defs.resources) >= {"storage", "io_manager", "mlflow", "constitution_library"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"ALIGNMENT_LABELLING": "labelstudio"},
            "ALIGNMENT_LABELLING='labelstudio': must be one of 'replay', 'file_queue' or 'label_studio'",
        ),
        (
            {"ALIGNMENT_POLICY_KIND": "OpenAI"},
            "ALIGNMENT_POLICY_KIND='OpenAI': must be one of 'transformers', 'openai' or 'vllm'",
        ),
        (
            {"ALIGNMENT_JUDGE_KIND": "tgi"},
            "ALIGNMENT_JUDGE_KIND='tgi': must be one of 'transformers', 'openai' or 'vllm'",
        ),
    ],
)
def test_bad_setting_names_the_environment_variable(tmp_path: Path, env: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        build_resources(Settings.from_env({"ALIGNMENT_ROOT": str(tmp_path), **env}))
    assert str(err.value) == message


def test_dagster_cli_loads_workspace() -> None:
    """The same entry point `make dev` uses: dagster loads the code location from workspace.yaml."""
    bindir = Path(sys.executable).parent
    out = subprocess.run(
        [str(bindir / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "alignment_dagster" in out.stdout + out.stderr


def test_demo_root_defaults_to_the_repo_not_the_cwd(tmp_path: Path, monkeypatch) -> None:
    # `compare` and `make dev` read the repo's .alignment/ by default; the demo must write there from any cwd.
    from alignment_dagster.cli import build_parser

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ALIGNMENT_ROOT", raising=False)
    assert build_parser().parse_args(["demo"]).root == str(REPO / ".alignment")
    assert Settings.from_env({}).root == str(REPO / ".alignment")
    monkeypatch.setenv("ALIGNMENT_ROOT", str(tmp_path / "elsewhere"))
    assert build_parser().parse_args(["demo"]).root == str(tmp_path / "elsewhere")
