"""Sensors: watched YAML libraries (new or changed files become partitions and runs) and the labelling backend
(new human answers re-run `human_labels`)."""

from dagster import (
    AssetCheckKey,
    AssetKey,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    RunStatusSensorContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_failure_sensor,
    run_status_sensor,
    sensor,
)

from alignment_dagster.core.watched import ScanPlan, dump_cursor, load_cursor
from alignment_dagster.human.collection import label_markers
from alignment_dagster.human.polling import dump_label_cursor, load_label_cursor, plan_label_runs, run_key
from alignment_dagster.jobs import (
    CONSTITUTION_ASSETS,
    LABEL_CHECKS,
    LABEL_REFRESH_ASSETS,
    SHARED_UPSTREAM,
    blend_version_job,
    constitution_job,
)
from alignment_dagster.partitions import blend_partitions, constitution_partitions
from alignment_dagster.resources.labelling import LabellingResource
from alignment_dagster.resources.libraries import BlendLibrary, ConstitutionLibrary, WatchedLibrary
from alignment_dagster.resources.storage_io import StorageResource
from alignment_dagster.resources.tracking import MLflowTracking

MAX_POLLED_VERSIONS = 200  # the newest constitution versions with edge cases; keeps a tick's requests bounded


def _scan(context: SensorEvaluationContext, library: WatchedLibrary, partitions_name: str, kind: str):
    """Plan a tick: the valid new/changed files (one per partition key) and the keys not yet added."""
    plan = library.plan(load_cursor(context.cursor))
    for error in plan.errors:
        context.log.warning(f"invalid {kind} skipped: {error}")
    versions = plan.versions
    new_keys = [k for k in versions if not context.instance.has_dynamic_partition(partitions_name, k)]
    return plan, versions, new_keys


def _skip(plan: ScanPlan, kind: str) -> SkipReason:
    return SkipReason("; ".join(plan.errors) if plan.errors else f"no new or changed {kind} files")


@sensor(job=constitution_job, minimum_interval_seconds=15, default_status=DefaultSensorStatus.RUNNING)
def constitution_sensor(context: SensorEvaluationContext, constitution_library: ConstitutionLibrary):
    """Adds a `constitution` partition and runs the pipeline for each new or changed valid file."""
    missing = [
        k for k in SHARED_UPSTREAM if context.instance.get_latest_materialization_event(AssetKey(k)) is None
    ]
    selection = [AssetKey(k) for k in CONSTITUTION_ASSETS + missing]
    return _version_runs(context, constitution_library, constitution_partitions, "constitution", selection)


@sensor(job=blend_version_job, minimum_interval_seconds=15, default_status=DefaultSensorStatus.RUNNING)
def blend_sensor(context: SensorEvaluationContext, blend_library: BlendLibrary):
    """Adds a `blend` partition for each new valid blend file and materializes `blend` for each new or changed
    one; the automation then refreshes its constitution x blend partitions (no judge calls)."""
    return _version_runs(context, blend_library, blend_partitions, "blend", job_name=blend_version_job.name)


def _version_runs(
    context: SensorEvaluationContext,
    library,
    partitions_def,
    kind: str,
    asset_selection: list[AssetKey] | None = None,
    job_name: str | None = None,
) -> SensorResult:
    """A run per new or changed valid `kind` file, the partitions to add and the cursor. The run_key (key and
    content hash) dedupes forever: the same content never runs twice from the sensor."""
    plan, versions, new_keys = _scan(context, library, partitions_def.name, kind)
    requests = [
        RunRequest(
            job_name=job_name,
            partition_key=key,
            asset_selection=asset_selection,
            run_key=f"{key}:{u.parsed.content_hash}",
            run_config={"ops": {kind: {"config": {"source": u.source}}}},
            tags={f"{kind}.source": u.source, f"{kind}.hash": u.parsed.content_hash},
        )
        for key, u in versions.items()
    ]
    cursor = dump_cursor(plan.cursor)
    if not requests:
        return SensorResult(skip_reason=_skip(plan, kind), cursor=cursor)
    return SensorResult(
        run_requests=requests,
        cursor=cursor,
        dynamic_partitions_requests=[partitions_def.build_add_request(new_keys)] if new_keys else [],
    )


@sensor(job=constitution_job, minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING)
def human_labels_sensor(
    context: SensorEvaluationContext, labelling: LabellingResource, storage: StorageResource
):
    """Re-runs `human_labels` for a constitution version whose labelling backend has new completed answers."""
    if labelling.backend == "replay":
        return SkipReason("replay labeller: labels are replayed inside human_labels, nothing to poll")
    # Only versions whose edge cases exist: a human_labels run needs them as input.
    routed = context.instance.get_materialized_partitions(AssetKey("edge_cases"))
    keys = [k for k in context.instance.get_dynamic_partitions(constitution_partitions.name) if k in routed]
    keys = keys[-MAX_POLLED_VERSIONS:]
    plan = plan_label_runs(
        label_markers(labelling.target(), keys, storage.open()), load_label_cursor(context.cursor)
    )
    cursor = dump_label_cursor(plan.cursor)
    if not plan.runs:
        return SensorResult(
            skip_reason=SkipReason(f"no new completed annotations ({len(keys)} version(s) polled)"),
            cursor=cursor,
        )
    selection = [AssetKey(k) for k in LABEL_REFRESH_ASSETS]
    return SensorResult(
        run_requests=[
            # The signal gate and the length check count this version's audit labels: re-check them.
            RunRequest(
                partition_key=key,
                asset_selection=selection,
                run_key=run_key(key, marker),
                asset_check_keys=[AssetCheckKey(AssetKey("ai_preferences"), name) for name in LABEL_CHECKS],
                tags={"labelling.backend": labelling.backend, "labelling.marker": marker},
            )
            for key, marker in plan.runs.items()
        ],
        cursor=cursor,
    )


# MLflow mirrors how each Dagster run ended, so a cancelled or failed run does not look finished there.
@run_status_sensor(
    run_status=DagsterRunStatus.CANCELED,
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=15,
)
def mlflow_cancelled_runs(context: RunStatusSensorContext, mlflow: MLflowTracking):
    """Marks the MLflow runs of a cancelled Dagster run KILLED."""
    if mlflow.close_dagster_run(context.dagster_run.run_id, "KILLED"):
        context.log.info(f"MLflow runs of {context.dagster_run.run_id} marked KILLED")


@run_failure_sensor(default_status=DefaultSensorStatus.RUNNING, minimum_interval_seconds=15)
def mlflow_failed_runs(context: RunFailureSensorContext, mlflow: MLflowTracking):
    """Marks the MLflow runs of a failed Dagster run FAILED (also when the failure was outside any asset)."""
    if mlflow.close_dagster_run(context.dagster_run.run_id, "FAILED"):
        context.log.info(f"MLflow runs of {context.dagster_run.run_id} marked FAILED")
