"""Constitution schema, hashing and partition keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from alignment_dagster.core.keys import InvalidKeyError, validate_key
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


def test_valid_constitution_parses_with_defaults() -> None:
    c = parse_constitution(VALID, "valid.yaml")
    assert c.name == "Test Constitution"
    assert [p.id for p in c.principles] == ["harm", "help"]
    assert c.principle_weights() == {"harm": 2.0, "help": 1.0}
    assert c.judge.min_confidence == 0.2
    assert c.routing.audit_fraction == 0.05
    assert c.partition_key == f"test-constitution-{c.content_hash[:8]}"
    assert len(c.content_hash) == 64


def test_key_ignores_formatting_but_not_meaning() -> None:
    base = parse_constitution(VALID, "a.yaml")
    reformatted = "# a comment\n" + VALID.replace("Choose the less", "Choose   the less") + "\n\n"
    assert parse_constitution(reformatted, "b.yaml").partition_key == base.partition_key
    reweighted = parse_constitution(VALID.replace("weight: 2", "weight: 3"), "c.yaml")
    assert reweighted.partition_key != base.partition_key
    assert reweighted.partition_key.startswith("test-constitution-")


def test_starter_constitutions_are_valid_and_distinct() -> None:
    folder = REPO / "constitutions"
    keys = [load_constitution(p).partition_key for p in sorted(folder.glob("*.yaml"))]
    assert 2 <= len(keys) <= 3 + 1
    assert len(set(keys)) == len(keys)
    cai = load_constitution(folder / "constitutional-ai.yaml")
    assert len(cai.principles) == 5
    for key in keys:
        validate_key(key)


def test_categories_are_slugified_like_prompt_categories() -> None:
    from alignment_dagster.judge.runner import applicable

    raw = parse_constitution(
        VALID + "    applies_to: [Red Team, red_team]\nrouting:\n  always_human: [Self Harm]\n", "raw.yaml"
    )
    assert raw.principles[1].applies_to == ["red-team", "red-team"]
    assert raw.routing.always_human == ["self-harm"]
    assert [p.id for p in applicable(raw.principles, "red-team")] == ["harm", "help"]
    assert [p.id for p in applicable(raw.principles, "general")] == ["harm"]
    slugs = parse_constitution(
        VALID + "    applies_to: [red-team, red-team]\nrouting:\n  always_human: [self-harm]\n", "slugs.yaml"
    )
    assert slugs.partition_key == raw.partition_key


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        (VALID + "colour: blue\n", "colour", "unknown key"),
        (
            VALID.replace("    weight: 2\n", "    weight: 2\n    wieght: 3\n"),
            "principles[0](harm).wieght",
            "unknown key",
        ),
        (VALID.replace("id: help", "id: harm"), "principles", "duplicate principle id 'harm'"),
        (
            VALID.replace("Choose the more helpful response.", '"  "'),
            "principles[1](help).text",
            "must not be empty",
        ),
        (VALID.replace("weight: 2", "weight: 0"), "principles[0](harm).weight", "must be > 0"),
        (VALID.replace("weight: 2", "weight: -1.5"), "principles[0](harm).weight", "must be > 0"),
        (VALID + "judge:\n  min_confidence: 2\n", "judge.min_confidence", "less than or equal to 1"),
        ("name: x\nprinciples: []\n", "principles", "at least one principle"),
        ("principles:\n  - id: a\n    text: t\n", "name", "Field required"),
        (
            VALID + "    applies_to: []\n",
            "principles[1](help).applies_to",
            "omit applies_to to apply it to every",
        ),
        (
            VALID + "    applies_to: ['!!']\n",
            "principles[1](help).applies_to",
            "category '!!' has no letters",
        ),
        (VALID + "routing:\n  always_human: [' ']\n", "routing.always_human", "category ' ' has no letters"),
        (VALID.replace("weight: 2", "weight: .inf"), "principles[0](harm).weight", "finite number"),
        (VALID.replace("weight: 2", "weight: .nan"), "principles[0](harm).weight", "finite number"),
        (
            VALID + "judge:\n  preference_model: pm\n  preference_model_temperature: .inf\n",
            "judge.preference_model_temperature",
            "finite number",
        ),
        (VALID + "judge:\n  gate:\n    alpha: .nan\n", "judge.gate.alpha", "finite number"),
        (
            VALID + "judge:\n  preference_model: models:/reward-x/champion\n",
            "judge.preference_model",
            "aliases and stages are refused",
        ),
        (
            VALID + "judge:\n  preference_model: 'models:/reward-x@champion'\n",
            "judge.preference_model",
            "pin a registered model by version",
        ),
    ],
)
def test_invalid_fields_name_file_and_field(text: str, field: str, message: str) -> None:
    with pytest.raises(ConstitutionError) as err:
        parse_constitution(text, "bad.yaml")
    assert err.value.source == "bad.yaml"
    assert err.value.field == field
    assert str(err.value).startswith(f"bad.yaml: {field}: ")
    assert message in str(err.value)


def test_registry_references_are_pinned_by_version() -> None:
    pinned = parse_constitution(VALID + "judge:\n  preference_model: models:/reward-x/3\n", "ok.yaml")
    assert pinned.judge.preference_model == "models:/reward-x/3"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "file is empty"),
        (b"# only a comment\n", "file is empty"),
        (b"name: x\nprinciples: [\n", "YAML syntax error at line"),
        (b"- just\n- a list\n", "top level must be a mapping"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (
            b"name: x\nprinciples:\n  - id: a\n    text: t\n    weight: 1\n    weight: 5\n",
            "at line 6, column 5: duplicate key 'weight'",
        ),
        (b"name: x\n" + b"# padding\n" * 110_000, "over the 1 MiB limit"),
    ],
)
def test_invalid_files_name_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_bytes(content)
    with pytest.raises(ConstitutionError) as err:
        load_constitution(path)
    assert str(err.value).startswith(str(path) + ": ")
    assert message in str(err.value)


def test_validate_reports_unreadable_paths_and_checks_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from alignment_dagster.cli import main

    folder = tmp_path / "adir.yaml"
    folder.mkdir()
    good = tmp_path / "good.yaml"
    good.write_text(VALID)
    with pytest.raises(ConstitutionError) as err:
        load_constitution(folder)
    assert str(err.value) == f"{folder}: cannot read file (Is a directory)"
    assert main(["validate", str(folder), str(tmp_path / "missing.yaml"), str(good)]) == 1
    out, errors = capsys.readouterr()
    assert errors.splitlines() == [
        f"INVALID {folder}: cannot read file (Is a directory)",
        f"INVALID {tmp_path / 'missing.yaml'}: cannot read file (No such file or directory)",
    ]
    key = parse_constitution(VALID, "x.yaml").partition_key
    assert out.splitlines() == [f"ok      {good}: {key} (2 principles)"]


def without_phase_one(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    data.pop("revision", None)
    for principle in data["principles"]:
        for key in ("critique_request", "revision_request", "role", "allows_refusal", "demonstrations"):
            principle.pop(key, None)
    return data


@pytest.mark.parametrize("key", ["../etc", "A-b", "a b", "", "a/b", "-a", "a-", "x" * 129, "a_b"])
def test_unsafe_keys_are_rejected(key: str) -> None:
    with pytest.raises(InvalidKeyError):
        validate_key(key)


def test_name_slug_makes_safe_key() -> None:
    c = parse_constitution(VALID.replace("Test Constitution", "Ünïcode & Friends!! v2"), "x.yaml")
    validate_key(c.partition_key)
    assert c.partition_key.startswith("unicode-friends-v2-")


def test_gate_settings_keep_old_keys_at_defaults_and_make_a_version_when_set() -> None:
    base = parse_constitution(VALID, "a.yaml")
    # Keys from before the gate existed: the hash of the canonical JSON without a `gate` entry.
    assert "gate" not in base.canonical()
    # The starters without their phase-1 fields (which came later and make new versions) keep their keys.
    assert {
        parse_constitution(yaml.safe_dump(without_phase_one(p)), p.name).partition_key.rsplit("-", 1)[1]
        for p in (REPO / "constitutions").glob("*.yaml")
    } == {"7babdd22", "e8b676f0", "24438795"}
    explicit = parse_constitution(VALID + "judge:\n  gate: {alpha: 0.05, min_n: 30}\n", "b.yaml")
    assert explicit.partition_key == base.partition_key
    overridden = parse_constitution(VALID + "judge:\n  gate: {override: reviewed by the team}\n", "c.yaml")
    assert overridden.judge.gate.override == "reviewed by the team"
    assert overridden.partition_key != base.partition_key
    with pytest.raises(ConstitutionError, match="min_n"):
        parse_constitution(VALID + "judge:\n  gate: {min_n: 0}\n", "d.yaml")


def test_length_bias_settings_keep_starter_keys_and_make_a_version_when_set() -> None:
    # A starter keeps its key with the length check's defaults written out: they are left out of the hash.
    for path in (REPO / "constitutions").glob("*.yaml"):
        text = path.read_text()
        assert "length_bias" not in text
        spelled = text.replace(
            "judge:\n", "judge:\n  length_bias: {max_excess: 0.1, min_n: 30, severity: warn}\n", 1
        )
        assert spelled != text, path.name
        assert parse_constitution(spelled, path.name).partition_key == load_constitution(path).partition_key
    base = parse_constitution(VALID, "a.yaml")
    assert "length_bias" not in base.canonical() and base.judge.length_bias.severity == "warn"
    explicit = parse_constitution(VALID + "judge:\n  length_bias: {max_excess: 0.1, min_n: 30}\n", "b.yaml")
    assert explicit.partition_key == base.partition_key
    blocking = parse_constitution(VALID + "judge:\n  length_bias: {block_ai_labels: true}\n", "c.yaml")
    assert blocking.judge.length_bias.block_ai_labels and blocking.partition_key != base.partition_key
    with pytest.raises(ConstitutionError, match="severity"):
        parse_constitution(VALID + "judge:\n  length_bias: {severity: fatal}\n", "d.yaml")


PHASE_ONE = VALID.replace(
    "    weight: 2\n",
    "    weight: 2\n    role: harmless\n    allows_refusal: true\n"
    "    critique_request: Say how the reply could cause harm.\n"
    "    revision_request: Rewrite the reply so it causes no harm.\n",
) + (
    "revision:\n  rounds: 3\n  demonstrations:\n"
    "    - {prompt: Hi, reply: Hello!, critique: Nothing is wrong., revision: Hello!}\n"
)


def test_phase_one_fields_parse_and_make_a_new_version() -> None:
    c = parse_constitution(PHASE_ONE, "p1.yaml")
    harm, helpful = c.principles
    assert (harm.role, harm.allows_refusal, harm.revises) == ("harmless", True, True)
    assert (helpful.role, helpful.allows_refusal, helpful.revises) == (None, False, False)
    assert [p.id for p in c.revising_principles()] == ["harm"]
    assert c.revision.rounds == 3 and c.demonstrations_for(harm)[0].unchanged
    assert c.partition_key != parse_constitution(VALID, "v.yaml").partition_key
    before = parse_constitution(PHASE_ONE.replace("could cause harm", "might harm"), "b.yaml")
    assert c.changes_from(before) == ["reworded harm.critique_request"]


def test_phase_one_fields_at_their_defaults_keep_the_key() -> None:
    explicit = VALID.replace(
        "    weight: 2\n", "    weight: 2\n    allows_refusal: false\n    demonstrations: []\n"
    )
    explicit += "revision:\n  rounds: 2\n  min_gain: 0.05\n"
    assert (
        parse_constitution(explicit, "e.yaml").partition_key
        == parse_constitution(VALID, "v.yaml").partition_key
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            PHASE_ONE.replace("    revision_request: Rewrite the reply so it causes no harm.\n", ""),
            "p1.yaml: principles[0](harm): critique_request and revision_request come as a pair",
        ),
        (
            VALID.replace(
                "    weight: 2\n",
                "    weight: 2\n    demonstrations:\n"
                "      - {prompt: a, reply: b, critique: c, revision: b}\n",
            ),
            "p1.yaml: principles[0](harm): demonstrations need critique_request and revision_request",
        ),
        (
            PHASE_ONE.split("revision:\n")[0],
            "p1.yaml: principle 'harm' has critique and revision requests but no demonstrations",
        ),
        (
            PHASE_ONE.replace("revision: Hello!}", "revision: Hi there!}"),
            "p1.yaml: the demonstrations for principle 'harm' need one whose reply is already fine and stays "
            "unchanged",
        ),
        (
            PHASE_ONE.replace("role: harmless", "role: kind"),
            "p1.yaml: principles[0](harm).role: Input should be",
        ),
        (PHASE_ONE.replace("rounds: 3", "rounds: 0"), "p1.yaml: revision.rounds: Input should be greater"),
        (
            PHASE_ONE.replace("critique: Nothing is wrong.", "critique: ' '"),
            "p1.yaml: revision.demonstrations[0].critique: must not be empty",
        ),
    ],
)
def test_phase_one_fields_are_validated(text: str, message: str) -> None:
    with pytest.raises(ConstitutionError) as err:
        parse_constitution(text, "p1.yaml")
    assert str(err.value).startswith(message), str(err.value)


def test_starters_revise_under_every_harm_principle_with_an_unchanged_demonstration() -> None:
    for path in sorted((REPO / "constitutions").glob("*.yaml")):
        c = load_constitution(path)
        assert c.revising_principles(), path.name
        assert all(any(d.unchanged for d in c.demonstrations_for(p)) for p in c.revising_principles())
    # Helpfulness guards (a revision must not make the reply worse under them); safety-strict has none.
    roles = {
        p.stem: {q.role for q in load_constitution(p).principles}
        for p in (REPO / "constitutions").glob("*.yaml")
    }
    assert {name for name, r in roles.items() if "helpful" in r} == {"constitutional-ai", "helpful-honest"}
