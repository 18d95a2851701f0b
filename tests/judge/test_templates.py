"""Judge templates: the version that keys every cached judgment is derived from the template's own text."""

import dataclasses
import re

import pytest

from alignment_dagster.judge.templates import TEMPLATES, get_template


def test_version_is_the_id_and_a_hash_of_the_text() -> None:
    versions = {t.id: t.version for t in TEMPLATES.values()}
    assert all(re.fullmatch(rf"{re.escape(i)}-[0-9a-f]{{8}}", v) for i, v in versions.items()), versions
    assert len(set(versions.values())) == len(versions)
    template = get_template("pairwise-v1")
    assert dataclasses.replace(template).version == template.version  # same text, same version


@pytest.mark.parametrize(
    "change",
    [
        {"user": get_template("pairwise-v1").user + " "},
        {"system": "You are a judge."},
        {"choices": ("1", "2")},
        {"followup": "Which one?"},
        {"rationale_tokens": 97},
    ],
)
def test_any_edit_of_what_the_judge_reads_makes_a_new_version(change: dict) -> None:
    template = get_template("pairwise-v1")
    assert dataclasses.replace(template, **change).version != template.version
