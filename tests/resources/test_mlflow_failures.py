"""An in-process run whose storage write fails after its MLflow run closed: that run and the Dagster run's
parent run end FAILED (the failure hook on every asset), not FINISHED, without the daemon's sensors; what
finished before stays FINISHED."""

from __future__ import annotations

from pathlib import Path

from dagster import AssetKey, DagsterInstance
from mlflow.tracking import MlflowClient

from alignment_dagster.core.settings import Settings
from alignment_dagster.definitions import build_definitions


def test_a_failed_storage_write_leaves_its_mlflow_runs_failed(settings: Settings) -> None:
    defs = build_definitions(settings)
    # A file where response_pairs' folder goes: its MLflow run is recorded, then writing its output fails.
    Path(settings.root).mkdir(parents=True, exist_ok=True)
    (Path(settings.root) / "response_pairs").write_text("not a folder")
    with DagsterInstance.ephemeral() as instance:
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance,
            asset_selection=[AssetKey(k) for k in ("prompt_pool", "response_pairs", "known_labels")],
            run_config={"ops": {"response_pairs": {"config": {"sample": False, "import_limit": 2}}}},
            raise_on_error=False,
        )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert failure.step_key == "response_pairs" and "FileExistsError" in str(failure.step_failure_data.error)
    client = MlflowClient(tracking_uri=settings.mlflow_uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("alignment-dagster").experiment_id],
        filter_string=f"tags.`dagster.run_id` = '{result.run_id}'",
    )
    status = {r.data.tags.get("dagster.op", r.data.tags["alignment.level"]): r.info.status for r in runs}
    assert status == {"dagster-run": "FAILED", "prompt_pool": "FINISHED", "response_pairs": "FAILED"}
