"""constitution_sensor against a real Dagster instance: partitions, run requests, cursor, errors, S3."""

import json
import shutil
from pathlib import Path

import boto3
import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    SensorResult,
    build_sensor_context,
)
from dagster_aws.s3 import S3Resource

from alignment_dagster.core.settings import Settings
from alignment_dagster.definitions import build_definitions
from alignment_dagster.resources.libraries import ConstitutionLibrary
from alignment_dagster.sensors import constitution_sensor
from alignment_dagster.specs.blend import parse_blend
from alignment_dagster.specs.constitution import load_constitution
from tests.conftest import REPO


def tick(instance: DagsterInstance, library: ConstitutionLibrary, cursor: str | None) -> SensorResult:
    with build_sensor_context(
        instance=instance, cursor=cursor, resources={"constitution_library": library}
    ) as ctx:
        result = constitution_sensor(ctx)
    assert isinstance(result, SensorResult)
    return result


def apply(instance: DagsterInstance, result: SensorResult) -> None:
    """What the daemon does with a tick's dynamic partition requests."""
    for req in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))


def skip_text(result: SensorResult) -> str:
    return result.skip_reason.skip_message if result.skip_reason else ""


def test_new_edited_deleted_and_restart(
    instance: DagsterInstance, constitutions_dir: Path, settings: Settings
) -> None:
    library = ConstitutionLibrary(folder=str(constitutions_dir))
    starter = {load_constitution(p).partition_key: p for p in constitutions_dir.glob("*.yaml")}

    first = tick(instance, library, None)
    assert sorted(r.partition_key for r in first.run_requests) == sorted(starter)
    assert [sorted(req.partition_keys) for req in first.dynamic_partitions_requests] == [sorted(starter)]
    for r in first.run_requests:
        assert r.run_key.startswith(r.partition_key + ":")
        assert r.run_config["ops"]["constitution"]["config"]["source"] == str(starter[r.partition_key])
    apply(instance, first)
    assert sorted(instance.get_dynamic_partitions("constitution")) == sorted(starter)

    # The run the sensor asked for materializes the partition on the same instance.
    defs = build_definitions(settings)
    req = first.run_requests[0]
    job = defs.resolve_job_def("constitution_pipeline")
    # Nothing was materialized yet, so the run also builds the shared inputs of the judge.
    assert {k.to_user_string() for k in req.asset_selection} == {
        "constitution",
        "ai_preferences",
        "ai_principle_votes",
        "edge_cases",
        "human_labels",
        "prompt_pool",
        "response_pairs",
        "known_labels",
    }
    run = job.execute_in_process(
        instance=instance,
        partition_key=req.partition_key,
        run_config=req.run_config,
        asset_selection=[AssetKey("constitution")],
    )
    assert run.success
    record = run.output_for_node("constitution")
    assert record.partition_key == req.partition_key

    # Restart with the same cursor: nothing happens.
    again = tick(instance, library, first.cursor)
    assert not again.run_requests and not again.dynamic_partitions_requests
    assert "no new or changed" in skip_text(again)

    # Edit one file: exactly one new version and one run.
    path = constitutions_dir / "helpful-honest.yaml"
    old_key = load_constitution(path).partition_key
    path.write_text(path.read_text().replace("weight: 2.0", "weight: 2.5"))
    new_key = load_constitution(path).partition_key
    assert new_key != old_key and new_key.startswith("helpful-honest-")
    edited = tick(instance, library, first.cursor)
    assert [r.partition_key for r in edited.run_requests] == [new_key]
    assert [list(req.partition_keys) for req in edited.dynamic_partitions_requests] == [[new_key]]
    apply(instance, edited)

    # Delete a file: no run, and its partition stays as history.
    deleted_key = load_constitution(constitutions_dir / "safety-strict.yaml").partition_key
    (constitutions_dir / "safety-strict.yaml").unlink()
    after_delete = tick(instance, library, edited.cursor)
    assert not after_delete.run_requests
    assert deleted_key in instance.get_dynamic_partitions("constitution")
    assert old_key in instance.get_dynamic_partitions("constitution")
    assert str(constitutions_dir / "safety-strict.yaml") not in json.loads(after_delete.cursor)["seen"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "file is empty"),
        (b"name: x\nprinciples: [\n", "YAML syntax error"),
        (b"name: x\ncolour: red\nprinciples:\n  - {id: a, text: t}\n", "colour: unknown key"),
        (b"name: x\nprinciples:\n  - {id: a, text: t}\n  - {id: a, text: u}\n", "duplicate principle id"),
        (b"name: x\nprinciples:\n  - {id: a, text: ''}\n", "text: must not be empty"),
        (b"name: x\nprinciples:\n  - {id: a, text: t, weight: 0}\n", "weight: must be > 0"),
        (b"name: x\nprinciples:\n  - {id: a, text: t}\n" + b"#" * (1024 * 1024), "over the 1 MiB limit"),
    ],
)
def test_invalid_file_skips_with_error_and_changes_nothing(
    instance: DagsterInstance, tmp_path: Path, content: bytes, expected: str
) -> None:
    folder = tmp_path / "lib"
    folder.mkdir()
    shutil.copy(REPO / "constitutions" / "constitutional-ai.yaml", folder)
    library = ConstitutionLibrary(folder=str(folder))
    first = tick(instance, library, None)
    apply(instance, first)
    before = sorted(instance.get_dynamic_partitions("constitution"))

    (folder / "broken.yaml").write_bytes(content)
    result = tick(instance, library, first.cursor)
    assert not result.run_requests and not result.dynamic_partitions_requests
    assert str(folder / "broken.yaml") in skip_text(result)
    assert expected in skip_text(result)
    assert json.loads(result.cursor) == json.loads(first.cursor)  # the invalid file is not recorded
    assert sorted(instance.get_dynamic_partitions("constitution")) == before

    # Fixing the file makes a version on the next tick.
    (folder / "broken.yaml").write_text("name: fixed\nprinciples:\n  - {id: a, text: be kind}\n")
    fixed = tick(instance, library, result.cursor)
    assert [r.partition_key.split("-")[0] for r in fixed.run_requests] == ["fixed"]


def test_s3_prefix_is_watched(
    instance: DagsterInstance, tmp_path: Path, s3_endpoint: str, s3_bucket: str
) -> None:
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    body = (REPO / "constitutions" / "safety-strict.yaml").read_bytes()
    client.put_object(Bucket=s3_bucket, Key="team/constitutions/safety.yaml", Body=body)
    client.put_object(Bucket=s3_bucket, Key="team/constitutions/notes.txt", Body=b"ignored")
    client.put_object(Bucket=s3_bucket, Key="team/constitutions/archive/old.yaml", Body=body)  # not recursive
    empty = tmp_path / "empty"
    empty.mkdir()
    library = ConstitutionLibrary(
        folder=str(empty),
        s3_uri=f"s3://{s3_bucket}/team/constitutions",
        s3=S3Resource(endpoint_url=s3_endpoint),
    )
    key = load_constitution(REPO / "constitutions" / "safety-strict.yaml").partition_key
    first = tick(instance, library, None)
    assert [r.partition_key for r in first.run_requests] == [key]
    assert first.run_requests[0].run_config["ops"]["constitution"]["config"]["source"] == (
        f"s3://{s3_bucket}/team/constitutions/safety.yaml"
    )
    assert not tick(instance, library, first.cursor).run_requests

    client.put_object(
        Bucket=s3_bucket,
        Key="team/constitutions/safety.yaml",
        Body=body.replace(b"weight: 3.0", b"weight: 4.0"),
    )
    changed = tick(instance, library, first.cursor)
    assert len(changed.run_requests) == 1 and changed.run_requests[0].partition_key != key


def _blend_folder_and_tick(instance: DagsterInstance, tmp_path: Path):
    """A copy of the starter blends, its library and a function running one `blend_sensor` tick over it."""
    from alignment_dagster.resources.libraries import BlendLibrary
    from alignment_dagster.sensors import blend_sensor

    folder = tmp_path / "blends"
    shutil.copytree(REPO / "blends", folder)
    library = BlendLibrary(folder=str(folder))

    def blend_tick(cursor: str | None) -> SensorResult:
        with build_sensor_context(
            instance=instance, cursor=cursor, resources={"blend_library": library}
        ) as ctx:
            return blend_sensor(ctx)

    return folder, library, blend_tick


def test_blend_sensor_adds_partitions_and_reports_bad_files(
    instance: DagsterInstance, tmp_path: Path
) -> None:
    folder, _, blend_tick = _blend_folder_and_tick(instance, tmp_path)
    first = blend_tick(None)
    starters = ["ai-only", "hh-baseline", "human-only", "hybrid"]
    assert [sorted(r.partition_keys) for r in first.dynamic_partitions_requests] == [starters]
    # Each version materializes the `blend` asset (the automation refreshes what depends on it).
    hashes = {k: parse_blend((folder / f"{k}.yaml").read_bytes(), k).content_hash for k in starters}
    assert sorted((r.job_name, r.partition_key, r.run_key) for r in first.run_requests) == [
        ("blend_version", k, f"{k}:{hashes[k]}") for k in starters
    ]
    apply(instance, first)
    assert "no new or changed blend files" in skip_text(blend_tick(first.cursor))
    (folder / "bad.yaml").write_text("name: bad\nconflict_policy: coin_flip\n")
    bad = blend_tick(first.cursor)
    assert not bad.dynamic_partitions_requests and not bad.run_requests
    assert f"{folder / 'bad.yaml'}: conflict_policy:" in skip_text(bad)
    assert sorted(instance.get_dynamic_partitions("blend")) == starters
    # An edited blend keeps its key: no new partition, one run for the new version.
    (folder / "hybrid.yaml").write_text("name: hybrid\nhuman_weight: 3\n")
    edited = blend_tick(first.cursor)
    assert not edited.dynamic_partitions_requests
    assert [(r.partition_key, r.run_key.split(":")[0]) for r in edited.run_requests] == [("hybrid", "hybrid")]


def test_blend_name_clash_is_reported_and_other_files_still_added(
    instance: DagsterInstance, tmp_path: Path
) -> None:
    from alignment_dagster.core.yaml_files import SpecError
    from alignment_dagster.sensors import blend_sensor

    folder, library, blend_tick = _blend_folder_and_tick(instance, tmp_path)
    first = blend_tick(None)
    apply(instance, first)
    # `Hybrid` slugs to the existing blend's key `hybrid`, with different weights: which one would runs use?
    (folder / "Hybrid.yaml").write_text("name: Hybrid\nai_weight: 0.25\n")
    clash = blend_tick(first.cursor)
    assert not clash.dynamic_partitions_requests
    assert skip_text(clash) == (
        f"{folder / 'Hybrid.yaml'}: name: partition key 'hybrid' is also held by "
        f"{folder / 'hybrid.yaml'} with different content; give them different names"
    )
    assert json.loads(clash.cursor) == json.loads(first.cursor)
    with pytest.raises(SpecError) as err:
        library.find("hybrid")
    assert str(err.value) == (
        f"hybrid: held by {folder / 'Hybrid.yaml'}, {folder / 'hybrid.yaml'} with different "
        "content; give them different names"
    )
    assert library.find("ai-only")[0] == str(folder / "ai-only.yaml")

    (folder / "fresh.yaml").write_text("name: fresh\n")
    fresh = blend_tick(clash.cursor)
    assert [list(r.partition_keys) for r in fresh.dynamic_partitions_requests] == [["fresh"]]
    assert str(folder / "Hybrid.yaml") not in json.loads(fresh.cursor)["seen"]

    # Both files new at once: neither gets the key; an identical copy is no clash (one version).
    (folder / "copy.yaml").write_bytes((folder / "ai-only.yaml").read_bytes())
    with build_sensor_context(
        instance=DagsterInstance.ephemeral(), resources={"blend_library": library}
    ) as ctx:
        again = blend_sensor(ctx)
    assert [sorted(r.partition_keys) for r in again.dynamic_partitions_requests] == [
        ["ai-only", "fresh", "hh-baseline", "human-only"]
    ]
