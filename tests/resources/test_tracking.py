"""MLflow tracking on a real SQLite store: one run per materialization, grouped per Dagster run."""

from pathlib import Path

from dagster import AssetKey, DagsterInstance
from mlflow.tracking import MlflowClient

from alignment_dagster.core.redaction import REDACTED, redact, redact_url
from alignment_dagster.core.settings import Settings
from alignment_dagster.definitions import build_definitions
from alignment_dagster.resources.tracking import MLflowTracking, flatten
from alignment_dagster.specs.constitution import load_constitution


def test_materialization_logs_tagged_run_under_parent(settings: Settings, constitutions_dir: Path) -> None:
    defs = build_definitions(settings)
    instance = DagsterInstance.ephemeral()
    c = load_constitution(constitutions_dir / "constitutional-ai.yaml")
    instance.add_dynamic_partitions("constitution", [c.partition_key])
    result = defs.resolve_job_def("constitution_pipeline").execute_in_process(
        instance=instance, partition_key=c.partition_key, asset_selection=[AssetKey("constitution")]
    )
    assert result.success
    meta = result.asset_materializations_for_node("constitution")[0].metadata
    run_id = meta["mlflow_run_id"].value
    assert meta["mlflow_url"].value.startswith("http://127.0.0.1:5000/#/experiments/")

    client = MlflowClient(tracking_uri=settings.mlflow_uri)
    assert settings.mlflow_uri == f"sqlite:///{settings.root}/mlflow.db"
    run = client.get_run(run_id)
    tags = run.data.tags
    assert tags["dagster.run_id"] == result.run_id
    assert tags["dagster.asset_key"] == "constitution"
    assert tags["dagster.partition_key"] == c.partition_key
    assert tags["constitution.hash"] == c.content_hash
    assert run.info.status == "FINISHED"
    assert run.data.params["constitution.hash"] == c.content_hash
    assert run.data.params["principle_weights.least-harmful"] == "1.0"
    assert run.data.metrics["n_principles"] == 5
    assert [a.path for a in client.list_artifacts(run_id)] == ["constitution.yaml"]

    parent = client.get_run(tags["mlflow.parentRunId"])
    assert parent.data.tags["dagster.run_id"] == result.run_id
    assert parent.data.tags["alignment.level"] == "dagster-run"
    exp = client.get_experiment_by_name("alignment-dagster")
    assert exp is not None and run.info.experiment_id == exp.experiment_id
    # Runs compare by constitution version: a search by tag finds exactly this one.
    found = client.search_runs([exp.experiment_id], f"tags.`constitution.hash` = '{c.content_hash}'")
    assert [r.info.run_id for r in found] == [run_id]


def test_two_assets_in_one_dagster_run_share_one_parent(tmp_path: Path) -> None:
    tracking = MLflowTracking(
        tracking_uri=f"sqlite:///{tmp_path}/m.db", artifact_location=str(tmp_path / "a")
    )
    ids = []
    for asset_key in ["a", "b"]:
        with tracking.start_run(dagster_run_id="run-123", job_name="job", asset_key=asset_key) as run:
            run.log_metrics({"x": 1.0, "nan": float("nan"), "none": None})
            ids.append(run.run_id)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/m.db")
    parents = {client.get_run(i).data.tags["mlflow.parentRunId"] for i in ids}
    assert len(parents) == 1
    assert client.get_run(ids[0]).data.metrics == {"x": 1.0}


def test_failed_body_marks_run_failed(tmp_path: Path) -> None:
    tracking = MLflowTracking(
        tracking_uri=f"sqlite:///{tmp_path}/m.db", artifact_location=str(tmp_path / "a")
    )
    try:
        with tracking.start_run(dagster_run_id="r", job_name="j", asset_key="a") as run:
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/m.db")
    assert client.get_run(run.run_id).info.status == "FAILED"


def test_secrets_never_become_params(tmp_path: Path) -> None:
    params = {
        "backend": {"base_url": "http://127.0.0.1:8000", "api_key": "sk-live-123"},
        "HF_TOKEN": "hf_x",
        "password": "p",
        "temperature": 0.7,
    }
    assert redact(params) == {
        "backend": {"base_url": "http://127.0.0.1:8000", "api_key": REDACTED},
        "HF_TOKEN": REDACTED,
        "password": REDACTED,
        "temperature": 0.7,
    }
    tracking = MLflowTracking(
        tracking_uri=f"sqlite:///{tmp_path}/m.db", artifact_location=str(tmp_path / "a")
    )
    with tracking.start_run(dagster_run_id="r", job_name="j", asset_key="a") as run:
        run.log_params(params)
    logged = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/m.db").get_run(run.run_id).data.params
    assert logged == flatten(redact(params))
    assert "sk-live-123" not in str(logged) and "hf_x" not in str(logged)


def test_url_credentials_never_become_params_or_tags(tmp_path: Path) -> None:
    assert redact_url("https://bob:pw1@judge.example:8443/v1") == "https://<redacted>@judge.example:8443/v1"
    assert redact_url("postgresql://u:p%40ss@db/mlflow") == "postgresql://<redacted>@db/mlflow"
    assert redact_url("http://h/v1?model=m&api_key=k9&x=1") == "http://h/v1?model=m&api_key=<redacted>&x=1"
    assert (
        redact_url("openai:m@http://127.0.0.1:8000/v1") == "openai:m@http://127.0.0.1:8000/v1"
    )  # nothing to hide
    tracking = MLflowTracking(
        tracking_uri=f"sqlite:///{tmp_path}/m.db", artifact_location=str(tmp_path / "a")
    )
    with tracking.start_run(dagster_run_id="r", job_name="j", asset_key="a") as run:
        run.log_params({"backend": {"base_url": "https://bob:pw1@judge.example/v1"}})
        run.set_tags({"judge.id": "openai:m@https://bob:pw1@judge.example/v1"})
    data = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/m.db").get_run(run.run_id).data
    assert data.params["backend.base_url"] == "https://<redacted>@judge.example/v1"
    assert data.tags["judge.id"] == "openai:m@https://<redacted>@judge.example/v1"


def test_cancelled_and_failed_dagster_runs_close_their_mlflow_runs(
    settings: Settings, constitutions_dir: Path
) -> None:
    """A cancelled run looks FINISHED in MLflow after its first asset closed the parent; the run status
    sensors give the parent (and a child its killed step left RUNNING) the Dagster run's final status."""
    from dagster import (
        AssetExecutionContext,
        DagsterEventType,
        asset,
        build_run_status_sensor_context,
        materialize,
    )

    from alignment_dagster.sensors import mlflow_cancelled_runs, mlflow_failed_runs

    defs = build_definitions(settings)
    tracking: MLflowTracking = defs.resources["mlflow"]
    instance = DagsterInstance.ephemeral()
    client = MlflowClient(tracking_uri=settings.mlflow_uri)

    # Cancelled: a real constitution run finished its first asset, then the run was cancelled mid-step.
    c = load_constitution(constitutions_dir / "constitutional-ai.yaml")
    instance.add_dynamic_partitions("constitution", [c.partition_key])
    done = defs.resolve_job_def("constitution_pipeline").execute_in_process(
        instance=instance, partition_key=c.partition_key, asset_selection=[AssetKey("constitution")]
    )
    child = client.get_run(
        done.asset_materializations_for_node("constitution")[0].metadata["mlflow_run_id"].value
    )
    parent = child.data.tags["mlflow.parentRunId"]
    assert client.get_run(parent).info.status == "FINISHED"
    killed_step = client.create_run(
        child.info.experiment_id, tags={"dagster.run_id": done.run_id, "alignment.level": "asset"}
    )
    run = instance.get_run_by_id(done.run_id)
    instance.report_run_canceled(run)
    event = next(
        e.dagster_event
        for e in instance.all_logs(done.run_id)
        if e.dagster_event and e.dagster_event.event_type == DagsterEventType.RUN_CANCELED
    )
    mlflow_cancelled_runs(
        build_run_status_sensor_context(
            "mlflow_cancelled_runs",
            event,
            instance,
            instance.get_run_by_id(done.run_id),
            resources={"mlflow": tracking},
        )
    )
    assert client.get_run(parent).info.status == "KILLED"
    assert client.get_run(killed_step.info.run_id).info.status == "KILLED"
    assert client.get_run(child.info.run_id).info.status == "FINISHED"  # what had finished stays finished

    # Failed: an asset that logged to MLflow, then one that raises.
    @asset
    def logs(context: AssetExecutionContext, mlflow: MLflowTracking) -> int:
        with mlflow.asset_run(context) as r:
            r.log_metrics({"x": 1})
        return 1

    @asset
    def breaks(logs: int) -> int:
        raise RuntimeError("boom")

    failed = materialize(
        [logs, breaks], instance=instance, resources={"mlflow": tracking}, raise_on_error=False
    )
    assert not failed.success
    [parent] = [
        r.info.run_id
        for r in client.search_runs(
            [child.info.experiment_id], filter_string=f"tags.`dagster.run_id` = '{failed.run_id}'"
        )
        if r.data.tags["alignment.level"] == "dagster-run"
    ]
    assert client.get_run(parent).info.status == "FINISHED"  # closed by its only child
    event = next(
        e.dagster_event
        for e in instance.all_logs(failed.run_id)
        if e.dagster_event and e.dagster_event.event_type == DagsterEventType.RUN_FAILURE
    )
    mlflow_failed_runs(
        build_run_status_sensor_context(
            "mlflow_failed_runs",
            event,
            instance,
            instance.get_run_by_id(failed.run_id),
            resources={"mlflow": tracking},
        ).for_run_failure()
    )
    assert client.get_run(parent).info.status == "FAILED"
