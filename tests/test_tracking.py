"""MLflow tracking on a real SQLite store: one run per materialization, grouped per Dagster run."""

from pathlib import Path

from dagster import AssetKey, DagsterInstance
from mlflow.tracking import MlflowClient

from alignment_dagster.constitution import load_constitution
from alignment_dagster.definitions import build_definitions
from alignment_dagster.resources.tracking import REDACTED, MLflowTracking, flatten, redact
from alignment_dagster.settings import Settings


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
    tracking = MLflowTracking(tracking_uri=f"sqlite:///{tmp_path}/m.db", artifact_location=str(tmp_path / "a"))
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
    tracking = MLflowTracking(tracking_uri=f"sqlite:///{tmp_path}/m.db", artifact_location=str(tmp_path / "a"))
    try:
        with tracking.start_run(dagster_run_id="r", job_name="j", asset_key="a") as run:
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/m.db")
    assert client.get_run(run.run_id).info.status == "FAILED"


def test_secrets_never_become_params(tmp_path: Path) -> None:
    params = {"backend": {"base_url": "http://127.0.0.1:8000", "api_key": "sk-live-123"}, "HF_TOKEN": "hf_x",
              "password": "p", "temperature": 0.7}
    assert redact(params) == {"backend": {"base_url": "http://127.0.0.1:8000", "api_key": REDACTED},
                              "HF_TOKEN": REDACTED, "password": REDACTED, "temperature": 0.7}
    tracking = MLflowTracking(tracking_uri=f"sqlite:///{tmp_path}/m.db", artifact_location=str(tmp_path / "a"))
    with tracking.start_run(dagster_run_id="r", job_name="j", asset_key="a") as run:
        run.log_params(params)
    logged = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/m.db").get_run(run.run_id).data.params
    assert logged == flatten(redact(params))
    assert "sk-live-123" not in str(logged) and "hf_x" not in str(logged)
