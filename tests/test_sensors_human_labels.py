"""human_labels_sensor: the polling plan as a plain function, then the sensor on a real Dagster instance
against a real Label Studio server and a real file queue (the runs it asks for are executed and pick up the
new labels)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dagster import AssetKey, AssetSelection, DagsterInstance, SensorResult, build_sensor_context

from alignment_dagster.core.settings import Settings
from alignment_dagster.definitions import build_definitions, build_resources
from alignment_dagster.human.file_queue import FileQueue
from alignment_dagster.human.polling import (
    dump_label_cursor,
    file_queue_marker,
    load_label_cursor,
    marker_count,
    plan_label_runs,
    run_key,
)
from alignment_dagster.jobs import CONSTITUTION_ASSETS, LABEL_REFRESH_ASSETS, SHARED_UPSTREAM
from alignment_dagster.partitions import constitution_partitions
from alignment_dagster.sensors import human_labels_sensor
from alignment_dagster.specs.constitution import parse_constitution
from tests.conftest import SHARED_DATA
from tests.human.test_label_studio import annotate, tasks_by_pair
from tests.label_studio_fixture import LabelStudioServer, label_studio  # noqa: F401

# One principle and 4 imported pairs: 8 judge prompts, judged once and cached for every version below.
CONSTITUTION = """
name: {name}
principles:
  - {{id: harm, text: Choose the less harmful reply.}}
"""


# -- the plan (plain function) -----------------------------------------------------------------------------


def test_plan_runs_changed_markers_only() -> None:
    seen = {"a-1": "2@t1", "b-1": "0@-", "gone-1": "5@t0"}
    plan = plan_label_runs({"a-1": "2@t1", "b-1": "1@t2", "c-1": "0@-", "d-1": "3@t3", "e-1": None}, seen)
    assert plan.runs == {"b-1": "1@t2", "d-1": "3@t3"}  # a unchanged; c new but empty; e has no project
    # Polled markers replace, unpolled entries (gone-1) are kept, None leaves nothing behind.
    assert plan.cursor == {"a-1": "2@t1", "b-1": "1@t2", "c-1": "0@-", "d-1": "3@t3", "gone-1": "5@t0"}
    # An edited answer (same count, later time) and a deleted one (count down) both re-run.
    again = plan_label_runs({"a-1": "2@t9", "b-1": "0@-"}, plan.cursor)
    assert again.runs == {"a-1": "2@t9", "b-1": "0@-"}
    assert plan_label_runs({"a-1": "2@t1"}, {"a-1": "2@t1"}).runs == {}


def test_markers_cursor_and_run_keys() -> None:
    assert marker_count("12@2025-01-01T00:00:00Z") == 12 and marker_count("junk") == 0
    empty = file_queue_marker([])
    assert empty == "0@-"
    one = file_queue_marker(["queue/k/labels/a-0123abcd.jsonl", "queue/k/labels/README.txt"])
    two = file_queue_marker(["queue/k/labels/b-99999999.jsonl", "queue/k/labels/a-0123abcd.jsonl"])
    assert one.startswith("1@") and two.startswith("2@") and one != two
    assert two == file_queue_marker(["queue/k/labels/a-0123abcd.jsonl", "queue/k/labels/b-99999999.jsonl"])
    cursor = dump_label_cursor({"a-1": "2@t1"})
    assert json.loads(cursor) == {"v": 1, "markers": {"a-1": "2@t1"}}
    assert load_label_cursor(cursor) == {"a-1": "2@t1"}
    assert load_label_cursor(None) == load_label_cursor("not json") == load_label_cursor('{"seen": {}}') == {}
    assert run_key("a-1", "2@t1") == "a-1:labels:2@t1"


def test_refresh_selection_is_human_labels_and_its_constitution_downstream(tmp_path: Path) -> None:
    defs = build_definitions(Settings.from_env({"ALIGNMENT_ROOT": str(tmp_path)}))
    graph = defs.resolve_asset_graph()
    downstream = {
        k.to_user_string() for k in AssetSelection.assets("human_labels").downstream().resolve(graph)
    }
    by_constitution = {
        k.to_user_string()
        for k in graph.get_all_asset_keys()
        if graph.get(k).partitions_def == constitution_partitions
    }
    assert set(LABEL_REFRESH_ASSETS) == (downstream | {"human_labels"}) & by_constitution
    assert set(LABEL_REFRESH_ASSETS) <= set(CONSTITUTION_ASSETS)


# -- the sensor on a real instance ---------------------------------------------------------------------------


class Pipeline:
    """Shared inputs materialized once; each constitution version judged (from the cache after the first)."""

    def __init__(self, root: Path, instance: DagsterInstance):
        self.root, self.instance = root, instance
        self.cdir = root / "constitutions"
        self.cdir.mkdir(parents=True)
        self.pairs_config = {
            "sample": False,
            "import_limit": 4,
            "heldout_fraction": 1.0,  # all four judged and routed: each measures the judge
            "import_sources": [str(SHARED_DATA)],
        }

    def settings(self, **env: str) -> Settings:
        return Settings.from_env(
            {
                "ALIGNMENT_ROOT": str(self.root / "data"),
                "ALIGNMENT_CONSTITUTIONS_DIR": str(self.cdir),
                "ALIGNMENT_IMPORT_PAIRS": str(SHARED_DATA),
                **env,
            }
        )

    def shared(self, settings: Settings) -> None:
        job = build_definitions(settings).resolve_implicit_global_asset_job_def()
        r = job.execute_in_process(
            instance=self.instance,
            asset_selection=[AssetKey(k) for k in SHARED_UPSTREAM],
            run_config={"ops": {"response_pairs": {"config": self.pairs_config}}},
        )
        assert r.success

    def version(self, name: str, settings: Settings):
        text = CONSTITUTION.format(name=name)
        (self.cdir / f"{name}.yaml").write_text(text)
        key = parse_constitution(text, f"{name}.yaml").partition_key
        self.instance.add_dynamic_partitions(constitution_partitions.name, [key])
        job = build_definitions(settings).resolve_job_def("constitution_pipeline")
        r = job.execute_in_process(
            instance=self.instance,
            partition_key=key,
            asset_selection=[AssetKey(k) for k in CONSTITUTION_ASSETS],
        )
        assert r.success
        return key, r

    def tick(self, settings: Settings, cursor: str | None) -> SensorResult:
        resources = build_resources(settings)
        with build_sensor_context(
            instance=self.instance,
            cursor=cursor,
            resources={"labelling": resources["labelling"], "storage": resources["storage"]},
        ) as ctx:
            result = human_labels_sensor(ctx)
        if not isinstance(result, SensorResult):  # a bare SkipReason (replay)
            result = SensorResult(skip_reason=result)
        return result

    def run(self, settings: Settings, request):
        # What the daemon launches: the requested assets and checks of the job, nothing else.
        job = (
            build_definitions(settings)
            .resolve_job_def("constitution_pipeline")
            .get_subset(
                asset_selection=set(request.asset_selection),
                asset_check_selection=set(request.asset_check_keys),
            )
        )
        r = job.execute_in_process(
            instance=self.instance, partition_key=request.partition_key, tags=request.tags
        )
        assert r.success
        assert {e.check_name for e in r.get_asset_check_evaluations()} == {"judge_signal", "length_bias"}
        return r


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory):
    with DagsterInstance.ephemeral() as instance:
        p = Pipeline(tmp_path_factory.mktemp("labels-sensor"), instance)
        p.shared(p.settings())
        yield p


@pytest.mark.slow
def test_label_studio_annotation_triggers_one_run(
    pipeline: Pipeline, label_studio: LabelStudioServer
) -> None:  # noqa: F811
    settings = pipeline.settings(
        ALIGNMENT_LABELLING="label_studio",
        ALIGNMENT_LABEL_STUDIO_URL=label_studio.url,
        ALIGNMENT_LABEL_STUDIO_TOKEN_ENV=label_studio.token_env,
    )
    key, first = pipeline.version("ls-sensor", settings)
    other, _ = pipeline.version("ls-sensor-other", settings)  # a second project that stays unanswered
    meta = first.asset_materializations_for_node("human_labels")[0].metadata
    assert (
        meta["n_labels"].value == 0 and meta["pending"].value == 4
    )  # 4 tasks in Label Studio, no answers yet
    project = meta["labelling"].value["project"]

    quiet = pipeline.tick(settings, None)
    assert not quiet.run_requests and "no new completed annotations" in quiet.skip_reason.skip_message
    assert load_label_cursor(quiet.cursor) == {key: "0@-", other: "0@-"}

    tasks = tasks_by_pair(label_studio, project)
    pair_id = sorted(tasks)[0]
    annotate(label_studio, tasks[pair_id]["id"], "Left", "submitted through the API")
    fired = pipeline.tick(settings, quiet.cursor)
    assert len(fired.run_requests) == 1
    req = fired.run_requests[0]
    assert req.partition_key == key and req.run_key.startswith(f"{key}:labels:1@")
    assert [k.to_user_string() for k in req.asset_selection] == LABEL_REFRESH_ASSETS
    assert [k.to_user_string() for k in req.asset_check_keys] == [
        "ai_preferences:judge_signal",
        "ai_preferences:length_bias",
    ]
    assert req.tags["labelling.backend"] == "label_studio"

    # The requested run collects the new answer, mapped back from Left to the pair's original side.
    labels = pipeline.run(settings, req).output_for_node("human_labels")
    assert labels["pair_id"].tolist() == [pair_id] and labels["backend"].tolist() == ["label_studio"]
    assert labels["choice"].tolist() == [tasks[pair_id]["data"]["left_is"]]

    # No duplicate: the same state of the labels asks for nothing, with the new cursor or the old one's run
    # key.
    again = pipeline.tick(settings, fired.cursor)
    assert not again.run_requests
    assert pipeline.tick(settings, quiet.cursor).run_requests[0].run_key == req.run_key  # dedupes by run key


@pytest.mark.slow
def test_file_queue_import_triggers_one_run(pipeline: Pipeline) -> None:
    settings = pipeline.settings(ALIGNMENT_LABELLING="file_queue")
    key, first = pipeline.version("fq-sensor", settings)
    sent = first.output_for_node("edge_cases")["send"]
    # Pairs humans answered for an earlier version are reused, not sent again; the rest wait in the queue.
    assert (
        first.asset_materializations_for_node("human_labels")[0].metadata["pending"].value
        == int(sent.sum())
        >= 1
    )
    quiet = pipeline.tick(settings, None)
    assert not quiet.run_requests and load_label_cursor(quiet.cursor) == {key: "0@-"}

    store = build_resources(settings)["storage"].open()
    queue = FileQueue(store, f"queue/{key}")
    pair_id = queue.tasks()["pair_id"].iloc[0]
    imported = queue.import_labels(f"pair_id,choice,annotator\n{pair_id},B,ann-1\n".encode(), "filled.csv")
    assert imported.ok and len(imported.labels) == 1
    fired = pipeline.tick(settings, quiet.cursor)
    assert [r.partition_key for r in fired.run_requests] == [key]
    labels = pipeline.run(settings, fired.run_requests[0]).output_for_node("human_labels")
    fresh = labels[labels["backend"] == "file_queue"]
    assert fresh[["pair_id", "choice", "annotator"]].to_dict("records") == [
        {"pair_id": pair_id, "choice": "B", "annotator": "ann-1"}
    ]
    # Importing the same bytes again stores the same file: nothing new.
    queue.import_labels(f"pair_id,choice,annotator\n{pair_id},B,ann-1\n".encode(), "filled.csv")
    assert not pipeline.tick(settings, fired.cursor).run_requests


def test_replay_backend_has_nothing_to_poll(pipeline: Pipeline) -> None:
    result = pipeline.tick(pipeline.settings(), None)
    assert not result.run_requests and "nothing to poll" in result.skip_reason.skip_message
