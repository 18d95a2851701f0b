"""How asset values are stored and read back: tables, JSON, pydantic models (typed on the way back)."""

from pathlib import Path

import pandas as pd
import pytest

from alignment_dagster.core.storage import LocalStorage
from alignment_dagster.core.values import read_value, stored_values, value_prefix, write_value
from alignment_dagster.specs.constitution import ConstitutionVersion, load_constitution
from tests.conftest import STARTER_CONSTITUTIONS


def test_a_pydantic_value_comes_back_as_its_model(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    path = STARTER_CONSTITUTIONS / "constitutional-ai.yaml"
    spec = load_constitution(path)
    version = ConstitutionVersion.of(spec, str(path), path.read_bytes())
    prefix = value_prefix(["constitution"], [spec.partition_key])
    assert write_value(store, prefix, version).endswith(f"constitution/{spec.partition_key}/data.json")
    typed = read_value(store, prefix, ConstitutionVersion)
    assert typed == version and typed.spec.principles == spec.principles
    # Stored under the field names a reader of the JSON sees (`constitution`, not the attribute `spec`).
    plain = read_value(store, prefix)
    assert plain["constitution"]["name"] == spec.name and plain["content_hash"] == spec.content_hash


def test_tables_of_other_partitions(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    for key, n in (("a-1", 1), ("b-2", 2), ("c-3", 3)):
        write_value(store, value_prefix(["human_labels"], [key]), pd.DataFrame({"x": range(n)}))
    write_value(store, value_prefix(["human_labels"], ["d-4"]), {"not": "a table"})
    got = stored_values(store, "human_labels", exclude="b-2")
    assert {k: len(v) for k, v in got.items()} == {"a-1": 1, "c-3": 3}


@pytest.mark.parametrize("bad", [["../x"], ["A"], ["a/b"]])
def test_prefix_components_are_validated(bad: list[str]) -> None:
    with pytest.raises(ValueError):
        value_prefix(["human_labels"], bad)


def test_unknown_value_types_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="cannot store set"):
        write_value(LocalStorage(tmp_path), "x", {1, 2})
