"""The command line reports failures as one line, never a traceback, and never creates what it was only
asked to read."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignment_dagster.cli import main
from tests.backend_fixtures import free_port
from tests.conftest import SHARED_DATA


@pytest.mark.parametrize(
    ("value", "message"), [("0", "must be >= 1, got 0"), ("many", "must be a whole number >= 1")]
)
def test_a_bad_batch_size_is_a_usage_error(value: str, message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["judge-eval", "--data", str(SHARED_DATA), "--batch-size", value])
    assert exit_.value.code == 2
    assert f"argument --batch-size: {message}" in capsys.readouterr().err


def test_an_unreachable_server_is_one_line(capsys) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    args = ["judge-eval", "--data", str(SHARED_DATA), "--limit", "1", "--backend", "openai"]
    assert main([*args, "--base-url", url, "--served-model", "m"]) == 1
    errors = capsys.readouterr().err
    assert "Traceback" not in errors
    # The last line (after the progress bar's): what failed and where.
    last = errors.splitlines()[-1]
    assert f"alignment-dagster: error: BackendRequestError: {url}/chat/completions: item " in last


def test_a_root_that_is_a_file_is_refused(tmp_path: Path, capsys) -> None:
    root = tmp_path / "root"
    root.write_text("a file")
    assert main(["demo", "--quick", "--root", str(root)]) == 1
    assert capsys.readouterr().err.strip() == f"alignment-dagster demo: --root {root} is a file, not a folder"


def test_compare_with_a_mistyped_root_creates_nothing(tmp_path: Path, capsys) -> None:
    typo = tmp_path / "alignmnet"
    assert main(["compare", "--root", str(typo)]) == 1
    assert "no such folder" in capsys.readouterr().err and not typo.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["compare", "--root", str(empty)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"no MLflow store at {empty / 'mlflow.db'} (check --root / --tracking-uri)"
    )
    assert list(empty.iterdir()) == []
