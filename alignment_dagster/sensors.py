"""`constitution_sensor`: new or changed constitution files become partitions and runs."""

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor

from alignment_dagster.constitution import Constitution, parse_constitution
from alignment_dagster.jobs import constitution_job
from alignment_dagster.library import dump_cursor, load_cursor, plan_updates
from alignment_dagster.partitions import constitution_partitions
from alignment_dagster.resources.library import ConstitutionLibrary


@sensor(job=constitution_job, minimum_interval_seconds=15, default_status=DefaultSensorStatus.RUNNING)
def constitution_sensor(context: SensorEvaluationContext, constitution_library: ConstitutionLibrary):
    """Adds a `constitution` partition and runs the pipeline for each new or changed valid file."""
    seen = load_cursor(context.cursor)
    plan = plan_updates(constitution_library.files(), seen, parse_constitution)
    for error in plan.errors:
        context.log.warning(f"invalid constitution skipped: {error}")

    requests: list[RunRequest] = []
    new_keys: list[str] = []
    versions: dict[str, Constitution] = {}
    for update in plan.updates:
        key = update.parsed.partition_key
        if key in versions:
            continue  # two files with identical content are one version
        versions[key] = update.parsed
        if not context.instance.has_dynamic_partition(constitution_partitions.name, key):
            new_keys.append(key)
        requests.append(
            RunRequest(
                partition_key=key,
                # run_key dedupes forever: the same content never runs twice from the sensor.
                run_key=f"{key}:{update.parsed.content_hash}",
                run_config={"ops": {"constitution": {"config": {"source": update.source}}}},
                tags={"constitution.source": update.source, "constitution.hash": update.parsed.content_hash},
            )
        )

    cursor = dump_cursor(plan.cursor)
    if not requests:
        reason = "; ".join(plan.errors) if plan.errors else "no new or changed constitution files"
        return SensorResult(skip_reason=SkipReason(reason), cursor=cursor)
    return SensorResult(
        run_requests=requests,
        cursor=cursor,
        dynamic_partitions_requests=[constitution_partitions.build_add_request(new_keys)] if new_keys else [],
    )
