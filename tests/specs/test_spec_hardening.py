"""Constitution and blend files that would break more than themselves: deep nesting, digits past Python's
limit, numbers that are finite but useless, YAML 1.1 words, identifiers with lookalikes, principle ids too
long for MLflow, FIFOs and devices given to `validate`. Each is its own file's error naming the field or
line, and the other files of the library keep working; the starter files keep their partition keys."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from alignment_dagster.resources.libraries import BlendLibrary
from alignment_dagster.specs.blend import BlendError, parse_blend
from alignment_dagster.specs.constitution import ConstitutionError, load_constitution, parse_constitution
from tests.conftest import REPO

VALID = """
name: Test Constitution
principles:
  - id: harm
    text: Choose the less harmful response.
    weight: 2
  - id: help
    text: Choose the more helpful response.
"""
# The starters' critique and revision requests (Constitutional AI phase 1) are content: new versions.
STARTER_KEYS = {
    "constitutional-ai.yaml": "constitutional-ai-6428c400",
    "helpful-honest.yaml": "helpful-honest-060c9a5b",
    "safety-strict.yaml": "safety-strict-3ae3125b",
}
STARTER_BLENDS = {
    "ai-only.yaml": "ai-only",
    "hh-baseline.yaml": "hh-baseline",
    "human-only.yaml": "human-only",
    "hybrid.yaml": "hybrid",
}


def _error(text: str) -> ConstitutionError:
    with pytest.raises(ConstitutionError) as err:
        parse_constitution(text, "bad.yaml")
    assert str(err.value).startswith("bad.yaml: ")
    return err.value


def test_starter_files_keep_their_partition_keys() -> None:
    for name, key in STARTER_KEYS.items():
        assert load_constitution(REPO / "constitutions" / name).partition_key == key
    for name, key in STARTER_BLENDS.items():
        assert parse_blend((REPO / "blends" / name).read_bytes(), name).partition_key == key


def test_deep_nesting_and_huge_integers_are_the_files_own_error() -> None:
    deep = _error(VALID + "description: " + "[" * 50_000 + "]" * 50_000 + "\n")
    assert "nested deeper than 32 levels at line 9" in str(deep)
    huge = _error(VALID.replace("weight: 2", "weight: " + "9" * 5000))
    assert "a number is too long" in str(huge)
    with pytest.raises(BlendError, match="nested deeper than 32 levels"):
        parse_blend("name: x\nai_weight: " + "[" * 40 + "]" * 40 + "\n", "b.yaml")


def test_one_bad_blend_file_leaves_every_other_blend_usable(tmp_path: Path) -> None:
    folder = tmp_path / "blends"
    shutil.copytree(REPO / "blends", folder)
    (folder / "deep.yaml").write_text("name: deep\nx: " + "[" * 100_000 + "]" * 100_000 + "\n")
    (folder / "digits.yaml").write_text("name: digits\nai_weight: " + "9" * 5000 + "\n")
    library = BlendLibrary(folder=str(folder))
    plan = library.plan({})
    assert sorted(plan.versions) == ["ai-only", "hh-baseline", "human-only", "hybrid"]
    assert sorted(e.split(":")[0] for e in plan.errors) == [
        str(folder / "deep.yaml"),
        str(folder / "digits.yaml"),
    ]
    source, _, blend = library.find("hybrid")
    assert source == str(folder / "hybrid.yaml") and blend.human_weight == 2.0


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        (
            VALID.replace("weight: 2", "weight: 1e308"),
            "principles[0](harm).weight",
            "between 1e-06 and 1e+06",
        ),
        (
            VALID.replace("weight: 2", "weight: 1e-320"),
            "principles[0](harm).weight",
            "between 1e-06 and 1e+06",
        ),
        (VALID.replace("weight: 2", "weight: yes"), "principles[0](harm).weight", "valid number"),
        (VALID.replace("weight: 2", "weight: off"), "principles[0](harm).weight", "valid number"),
        (VALID.replace("weight: 2", "weight: '2'"), "principles[0](harm).weight", "valid number"),
        (VALID + "judge:\n  min_confidence: no\n", "judge.min_confidence", "valid number"),
        (VALID + "routing:\n  human_budget: 1e30\n", "routing.human_budget", "valid integer"),
        (VALID + "routing:\n  human_budget: 10000000000\n", "routing.human_budget", "less than or equal"),
        (
            VALID + "judge:\n  preference_model: pm\n  preference_model_temperature: 1e-300\n",
            "judge.preference_model_temperature",
            "greater than or equal to 0.001",
        ),
    ],
)
def test_useless_numbers_and_yaml_words_are_refused(text: str, field: str, message: str) -> None:
    err = _error(text)
    assert err.field == field and message in str(err), str(err)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("ai_weight: 1e308", "0 or between 1e-06 and 1e+06"),
        ("human_weight: 1e-320", "0 or between 1e-06 and 1e+06"),
        ("human_margin: 1e300", "less than or equal to 100"),
        ("ai_weight: yes", "valid number"),
        ("include_ties: 'yes'", "valid boolean"),
    ],
)
def test_blend_numbers_that_would_break_training_are_refused(change: str, message: str) -> None:
    with pytest.raises(BlendError) as err:
        parse_blend(f"name: b\n{change}\n", "b.yaml")
    assert err.value.field == change.split(":")[0] and message in str(err.value)
    assert parse_blend("name: b\nai_weight: 0\nhuman_weight: 1e6\n", "b.yaml").ai_weight == 0


@pytest.mark.parametrize(
    ("pid", "why"),
    [
        ("Harm", "upper-case letters"),
        ("\uff48\uff41\uff52\uff4d", "compatibility form"),  # full-width "harm"
        ("h\u0430rm", "CYRILLIC SMALL LETTER A"),
        ("harm\u200b", "invisible character"),
        (" harm", "character ' '"),
        ("h" * 65, "is 65 characters"),
        ("harm-", "starts or ends"),
    ],
)
def test_principle_ids_with_lookalikes_are_refused_not_rewritten(pid: str, why: str) -> None:
    err = _error(VALID.replace("id: harm", f"id: '{pid}'"))
    assert err.field == "principles[0]" or err.field.startswith("principles[0]"), str(err)
    assert why in str(err) and "[a-z0-9_-]" in str(err)


def test_names_and_categories_with_lookalikes_are_refused() -> None:
    assert "CYRILLIC" in str(_error(VALID.replace("Test Constitution", "Test Con\u0455titution")))
    err = _error(VALID + "    applies_to: [r\u0435d-team]\n")
    assert err.field == "principles[1](help).applies_to" and "CYRILLIC SMALL LETTER IE" in str(err)
    with pytest.raises(BlendError, match="compatibility form"):
        parse_blend("name: \uff48ybrid\n", "b.yaml")
    assert _error(VALID.replace("Choose the more helpful response.", "'\u200b\u200b'")).field == (
        "principles[1](help).text"
    )


def test_the_longest_principle_id_fits_mlflow(tmp_path: Path) -> None:
    """An id passes only if every MLflow key made of it does: the constitution's report logs as params."""
    from alignment_dagster.resources.tracking import MLflowTracking
    from alignment_dagster.specs.constitution import ConstitutionVersion

    pid = "p" * 64
    text = VALID.replace("id: harm", f"id: {pid}")
    version = ConstitutionVersion.of(parse_constitution(text, "x.yaml"), "x.yaml", text.encode())
    tracking = MLflowTracking(
        tracking_uri=f"sqlite:///{tmp_path}/m.db", artifact_location=str(tmp_path / "a")
    )
    with tracking.start_run(dagster_run_id="r", job_name="j", asset_key="constitution") as run:
        run.report(version.report())
    params = tracking.client.get_run(run.run_id).data.params
    assert params[f"principle_weights.{pid}"] == "2.0"


def test_validate_refuses_fifos_and_devices_without_blocking(tmp_path: Path, capsys) -> None:
    from alignment_dagster.cli import main

    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    good = tmp_path / "good.yaml"
    good.write_text(VALID)
    assert main(["validate", str(fifo), "/dev/zero", str(good)]) == 1
    out, errors = capsys.readouterr()
    assert errors.splitlines() == [
        f"INVALID {fifo}: cannot read file (not a regular file (a FIFO, device or socket))",
        "INVALID /dev/zero: cannot read file (not a regular file (a FIFO, device or socket))",
    ]
    assert out.startswith(f"ok      {good}: test-constitution-")
