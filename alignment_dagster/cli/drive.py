"""The daemon's work, tick by tick, in this process: the library sensors and the automation, on a real
instance. The demo drives the pipeline with it (so `make demo` and `make dev` run the same sensors and
conditions), and tests count what one tick asks for.

Runs are executed in-process (one run per partition, as the automation sensor would launch it) and tagged
like the daemon's, so a daemon started later on the same instance finds the sensors' run keys taken and
launches nothing twice; the automation's first daemon tick is an initial evaluation, which requests nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from dagster import (
    AssetKey,
    DagsterInstance,
    Definitions,
    MultiPartitionsDefinition,
    RunsFilter,
    SensorResult,
    build_sensor_context,
    evaluate_automation_conditions,
)
from dagster._core.storage.tags import RUN_KEY_TAG, SENSOR_NAME_TAG

Report = Callable[[str], None]
# Dagster's console logger prints every event at DEBUG; the driver's own lines say what ran.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass
class Executed:
    """What one batch of runs did: each run's selection, partition and success."""

    runs: list[tuple[str, str | None, bool]] = field(default_factory=list)
    results: list = field(default_factory=list)  # ExecuteInProcessResult, in order

    @property
    def failed(self) -> list[tuple[str, str | None]]:
        return [(assets, key) for assets, key, ok in self.runs if not ok]


class Driver:
    """Sensors and automation of `defs` on `instance`, each tick run to completion before the next."""

    def __init__(self, defs: Definitions, instance: DagsterInstance, log: Report = print):
        self.defs, self.instance, self.log = defs, instance, log
        self.cursors: dict[str, str | None] = {}
        self.automation_cursor = None
        self.graph = defs.resolve_asset_graph()

    def tick_sensor(self, name: str) -> Executed:
        """One tick of a library sensor: its partitions added, its runs executed (skipping run keys done)."""
        sensor = self.defs.resolve_sensor_def(name)
        with build_sensor_context(
            instance=self.instance,
            cursor=self.cursors.get(name),
            resources=self.defs.resources,
            definitions=self.defs,
        ) as context:
            result = sensor(context)
        if not isinstance(result, SensorResult):
            return Executed()
        self.cursors[name] = result.cursor
        for request in result.dynamic_partitions_requests or []:
            self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        done = Executed()
        for request in result.run_requests or []:
            if self.instance.get_runs(
                filters=RunsFilter(tags={RUN_KEY_TAG: request.run_key, SENSOR_NAME_TAG: name})
            ):
                continue
            job = self.defs.resolve_job_def(request.job_name or sensor.job_name)
            tags = {**request.tags, RUN_KEY_TAG: request.run_key, SENSOR_NAME_TAG: name}
            outcome = job.execute_in_process(
                instance=self.instance,
                partition_key=request.partition_key,
                run_config={**QUIET, **(request.run_config or {})},
                tags=tags,
                raise_on_error=False,
                asset_selection=request.asset_selection,
            )
            done.runs.append((job.name, request.partition_key, outcome.success))
            done.results.append(outcome)
        return done

    def tick_automation(self) -> dict[tuple, set[AssetKey]]:
        """One evaluation of the automation conditions: what they request, by (partitions, partition key)."""
        result = evaluate_automation_conditions(self.defs, self.instance, cursor=self.automation_cursor)
        self.automation_cursor = result.cursor
        groups: dict[tuple, set[AssetKey]] = defaultdict(set)
        for key in self.graph.get_all_asset_keys():
            for partition in result.get_requested_partitions(key):
                groups[(self.graph.get(key).partitions_def, partition)].add(key)
        return groups

    def settle(self, max_ticks: int = 20) -> Executed:
        """Tick the automation and run what it asks for until it asks for nothing more."""
        done = Executed()
        job = self.defs.resolve_implicit_global_asset_job_def()
        for _ in range(max_ticks):
            groups = self.tick_automation()
            if not groups:
                return done
            for (partitions, partition), keys in sorted(groups.items(), key=lambda g: str(g[0][1])):
                multi = isinstance(partitions, MultiPartitionsDefinition)
                key = partitions.get_partition_key_from_str(partition) if multi else partition
                names = ",".join(sorted(k.to_user_string() for k in keys))
                self.log(f"[automation] {names}{f' [{partition}]' if partition else ''}")
                outcome = job.execute_in_process(
                    instance=self.instance,
                    partition_key=key,
                    raise_on_error=False,
                    run_config=QUIET,
                    asset_selection=sorted(keys),
                    tags={"alignment.automated": "true"},
                )
                done.runs.append((names, partition, outcome.success))
                done.results.append(outcome)
        raise RuntimeError(f"the automation still asked for runs after {max_ticks} ticks")
