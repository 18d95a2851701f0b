"""Sensors over watched YAML libraries: new or changed files become partitions (and runs)."""

from dagster import AssetKey, DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor

from alignment_dagster.jobs import CONSTITUTION_ASSETS, SHARED_UPSTREAM, constitution_job
from alignment_dagster.library import ScanPlan, dump_cursor, load_cursor, plan_updates
from alignment_dagster.partitions import blend_partitions, constitution_partitions
from alignment_dagster.resources.library import BlendLibrary, ConstitutionLibrary, _Library


def _scan(context: SensorEvaluationContext, library: _Library, partitions_name: str, kind: str):
    """Plan a tick: the valid new/changed files (one per partition key) and the keys not yet added."""
    plan: ScanPlan = plan_updates(library.files(), load_cursor(context.cursor), library.parse)
    for error in plan.errors:
        context.log.warning(f"invalid {kind} skipped: {error}")
    versions = {}
    for update in plan.updates:
        versions.setdefault(update.parsed.partition_key, update)  # identical content in two files: one version
    new_keys = [k for k in versions if not context.instance.has_dynamic_partition(partitions_name, k)]
    return plan, versions, new_keys


def _skip(plan: ScanPlan, kind: str) -> SkipReason:
    return SkipReason("; ".join(plan.errors) if plan.errors else f"no new or changed {kind} files")


@sensor(job=constitution_job, minimum_interval_seconds=15, default_status=DefaultSensorStatus.RUNNING)
def constitution_sensor(context: SensorEvaluationContext, constitution_library: ConstitutionLibrary):
    """Adds a `constitution` partition and runs the pipeline for each new or changed valid file."""
    plan, versions, new_keys = _scan(context, constitution_library, constitution_partitions.name, "constitution")
    missing = [k for k in SHARED_UPSTREAM if context.instance.get_latest_materialization_event(AssetKey(k)) is None]
    selection = [AssetKey(k) for k in CONSTITUTION_ASSETS + missing]
    requests = [
        RunRequest(
            partition_key=key,
            asset_selection=selection,
            # run_key dedupes forever: the same content never runs twice from the sensor.
            run_key=f"{key}:{u.parsed.content_hash}",
            run_config={"ops": {"constitution": {"config": {"source": u.source}}}},
            tags={"constitution.source": u.source, "constitution.hash": u.parsed.content_hash},
        )
        for key, u in versions.items()
    ]
    cursor = dump_cursor(plan.cursor)
    if not requests:
        return SensorResult(skip_reason=_skip(plan, "constitution"), cursor=cursor)
    return SensorResult(
        run_requests=requests,
        cursor=cursor,
        dynamic_partitions_requests=[constitution_partitions.build_add_request(new_keys)] if new_keys else [],
    )


@sensor(minimum_interval_seconds=15, default_status=DefaultSensorStatus.RUNNING)
def blend_sensor(context: SensorEvaluationContext, blend_library: BlendLibrary):
    """Adds a `blend` partition for each new valid blend file (the constitution x blend assets use it)."""
    plan, versions, new_keys = _scan(context, blend_library, blend_partitions.name, "blend")
    cursor = dump_cursor(plan.cursor)
    if not new_keys:
        return SensorResult(skip_reason=_skip(plan, "blend"), cursor=cursor)
    return SensorResult(cursor=cursor, dynamic_partitions_requests=[blend_partitions.build_add_request(new_keys)])
