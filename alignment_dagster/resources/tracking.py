"""MLflow tracking: one MLflow run per asset materialization, grouped under a parent run per Dagster run.

dagster-mlflow's resource opens one MLflow run per Dagster *run* and can end it early, so this small
resource uses `MlflowClient` directly (no global fluent state, safe across threads and processes).

Every client call goes through `core.redaction.redacted_errors` (MLflow writes its tracking URI, password
included, into its exceptions), and MLflow's HTTP client gets bounded waits unless the environment sets
its own (`MLFLOW_HTTP_DEFAULTS`: 8 s per connect or read, 2 retries, so an unreachable server fails a call
within about 53 s instead of MLflow's 7 retries of 120 s). A tracking URI with credentials is passed as a
Dagster `EnvVar` (`definitions.build_resources`), resolved at run time and never stored. A step that fails
after its MLflow run finished (writing its output, say) marks that run and its parent FAILED
(`mlflow_step_failed`, a failure hook on every asset), so `compare` never reads a run whose data is not
stored.
"""

from __future__ import annotations

import io
import json
import numbers
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import pandas as pd
from dagster import (
    AssetExecutionContext,
    ConfigurableResource,
    EnvVar,
    HookContext,
    MetadataValue,
    MultiPartitionKey,
    failure_hook,
)
from pydantic import Field, PrivateAttr

from alignment_dagster.core.db_lock import store_lock
from alignment_dagster.core.redaction import credentials_in, redact, redact_text, redacted_errors
from alignment_dagster.core.reporting import StageReport, is_number, markdown_table, png_markdown

EXPERIMENT = "alignment-dagster"
MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "8",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1.0",
}


def mlflow_worst_case_s(env: Mapping[str, str] | None = None) -> float:
    """Longest one MLflow HTTP call can take to fail under these settings: every attempt waiting out its
    connect and read timeouts, plus urllib3's backoff (factor x 2^(n-1)) and jitter between them."""
    env = {**MLFLOW_HTTP_DEFAULTS, **(os.environ if env is None else env)}
    timeout, retries = float(env["MLFLOW_HTTP_REQUEST_TIMEOUT"]), int(env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    factor, jitter = (
        float(env["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"]),
        float(env["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"]),
    )
    return (retries + 1) * 2 * timeout + sum(factor * 2**i + jitter for i in range(retries))


class RedactingClient:
    """An MlflowClient whose every call raises errors without secrets (`core.redaction.redacted_errors`)."""

    def __init__(self, client: Any):
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with redacted_errors(f"MLflow {name}"):
                return attr(*args, **kwargs)

        return call


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            flat.update(flatten(v, f"{key}."))
        else:
            text = v if isinstance(v, str) else json.dumps(v, default=str)
            flat[key] = text[:6000]  # MLflow's param value limit
    return flat


def partition_tags(partition_key: str | MultiPartitionKey | None) -> dict[str, str]:
    if partition_key is None:
        return {}
    tags = {"dagster.partition_key": str(partition_key)}
    if isinstance(partition_key, MultiPartitionKey):
        for dim, key in partition_key.keys_by_dimension.items():
            tags[f"dagster.partition.{dim}"] = key
    return tags


class TrackedRun:
    """Handle for one MLflow run; every method logs straight to the tracking store."""

    def __init__(self, client: Any, run_id: str, url: str):
        self.client = client
        self.run_id = run_id
        self.url = url

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = flatten(redact(params))
        items = [Param(k, v) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float | int | None], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [
            Metric(k, float(v), ts, step or 0)
            for k, v in metrics.items()
            if v is not None and v == v  # skip NaN
        ]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i : i + 500])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, redact_text(str(v)))

    def _log_bytes(self, name: str, data: bytes, artifact_path: str | None) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_bytes(data)
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_table(self, name: str, df: pd.DataFrame, artifact_path: str = "tables") -> None:
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        self._log_bytes(f"{name}.parquet", buf.getvalue(), artifact_path)

    def log_json(self, name: str, obj: Any, artifact_path: str | None = None) -> None:
        self._log_bytes(f"{name}.json", json.dumps(obj, indent=1, default=str).encode(), artifact_path)

    def log_text(self, name: str, text: str, artifact_path: str | None = None) -> None:
        self._log_bytes(name, text.encode(), artifact_path)

    def log_figure(self, name: str, png: bytes, artifact_path: str = "plots") -> None:
        self._log_bytes(f"{name}.png", png, artifact_path)

    def log_dataset(self, df: pd.DataFrame, name: str, context: str = "training") -> None:
        """Record a table as an MLflow dataset input of this run (schema + digest, shown in the UI)."""
        import mlflow.data
        from mlflow.entities import DatasetInput, InputTag

        dataset = mlflow.data.from_pandas(df, name=name)
        self.client.log_inputs(
            self.run_id,
            datasets=[
                DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])
            ],
        )

    def log_dir(self, local_dir: Path, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def metadata(self) -> dict[str, Any]:
        return {"mlflow_run_id": self.run_id, "mlflow_url": MetadataValue.url(self.url)}

    def register_model(self, local_dir: Path, name: str, tags: Mapping[str, str], store: Any) -> str:
        """Register a model folder as a new version of `name`, its files by content in `store`'s blobs
        (`training.artifacts.log_and_register`); returns `models:/<name>/<version>`."""
        from alignment_dagster.training.artifacts import log_and_register

        version = log_and_register(self.client, self.run_id, local_dir, name, store, tags=dict(tags))
        return f"models:/{name}/{version.version}"

    def report(self, report: StageReport) -> dict[str, Any]:
        """Log `report` to this run and return it as Dagster metadata, with this run's id and link."""
        if report.tags:
            self.set_tags(report.tags)
        if report.params:
            self.log_params(report.params)
        self.log_metrics(report.all_metrics())
        for key, points in report.curves.items():
            for step, value in points:
                self.log_metrics({key: value}, step=step)
        for name, table in report.tables.items():
            if table.artifact:
                self.log_table(name, table.frame)
        for name, (png, _, _) in report.plots.items():
            self.log_figure(name, png)
        for name, (text, _) in report.texts.items():
            self.log_text(name, text)
        for name, frame in report.datasets.items():
            self.log_dataset(frame, name=name)
        return {**metadata_for(report), **self.metadata()}


def metadata_for(report: StageReport) -> dict[str, Any]:
    """The Dagster metadata of a report: its summary, details, table previews, plots and markdown texts."""
    meta = {k: v for k, v in ((k, _metadata_value(v)) for k, v in report.summary.items()) if v is not None}
    meta.update({name: MetadataValue.json(values) for name, (values, _) in report.details.items()})
    for table in report.tables.values():
        if table.preview is not None:
            shown = table.frame[list(table.preview)]
            meta[table.preview_key] = MetadataValue.md(
                markdown_table(shown, table.max_rows, table.max_chars) if len(shown) else "empty"
            )
    meta.update({key: MetadataValue.md(png_markdown(png, alt)) for png, alt, key in report.plots.values()})
    meta.update(
        {
            name.rsplit(".", 1)[0]: MetadataValue.md(text)
            for name, (text, markdown) in report.texts.items()
            if markdown
        }
    )
    meta.update({name: MetadataValue.md(text) for name, text in report.notes.items()})
    return meta


def _metadata_value(value: Any) -> Any:
    """A summary value as Dagster metadata: plain numbers, text and flags as they are, mappings and lists as
    JSON; NaN and None are left out (the metadata shows only what was measured)."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, bool | str):
        return value
    if is_number(value):
        return int(value) if isinstance(value, numbers.Integral) else float(value)
    if isinstance(value, Mapping | list | tuple):
        return MetadataValue.json(value)
    return str(value)


class MLflowTracking(ConfigurableResource):
    """Logs every materialization to MLflow with the Dagster run, asset and partition as tags."""

    tracking_uri: str = Field(
        description="MLflow tracking URI (default: sqlite under the storage root); one with credentials is "
        "given as the variable that holds it (EnvVar), never as its value."
    )
    experiment: str = Field(EXPERIMENT, description="MLflow experiment name.")
    artifact_location: str | None = Field(None, description="Artifact root for a new experiment.")
    ui_url: str = Field("http://127.0.0.1:5000", description="MLflow UI base URL for links in metadata.")

    _client: Any = PrivateAttr(default=None)
    _experiment_id: str | None = PrivateAttr(default=None)
    _store_lock: Any = PrivateAttr(default=None)

    @property
    def uri(self) -> str:
        """The tracking URI, also where the resource was built outside a run with an unresolved EnvVar."""
        uri = self.tracking_uri
        return uri.get_value() or "" if isinstance(uri, EnvVar) else uri

    def _lock(self) -> AbstractContextManager | None:
        # A database store is shared by concurrent Dagster runs and by the step processes of one run:
        # serialise schema set-up and the experiment/parent-run creation so each is created once (a file
        # lock for SQLite, an advisory lock in PostgreSQL). One re-entrant lock per resource instance, so
        # nested sections do not deadlock.
        if self._store_lock is None:
            self._store_lock = store_lock(self.uri, f"mlflow-tracking:{self.experiment}")
        return self._store_lock

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            for name, value in MLFLOW_HTTP_DEFAULTS.items():
                os.environ.setdefault(name, value)  # MLflow reads these per request, from the environment
            if credentials_in(self.uri):  # MLflow prints "View run <url>" with the URI's password in it
                os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
            lock = self._lock()
            with redacted_errors("MLflow client"):
                if lock:
                    with lock:  # the first client on a new database runs schema migrations
                        client = RedactingClient(MlflowClient(tracking_uri=self.uri))
                        client.search_experiments(max_results=1)
                else:
                    client = RedactingClient(MlflowClient(tracking_uri=self.uri))
            self._client = client
        return self._client

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            lock = self._lock()
            with lock if lock else nullcontext():
                exp = self.client.get_experiment_by_name(self.experiment)
                if exp is None:
                    location = self.artifact_location
                    if location and "://" not in location:
                        Path(location).mkdir(parents=True, exist_ok=True)
                        location = Path(location).resolve().as_uri()
                    self._experiment_id = self._create_experiment(location)
                else:
                    self._experiment_id = exp.experiment_id
        return self._experiment_id

    def _create_experiment(self, location: str | None) -> str:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.create_experiment(self.experiment, artifact_location=location)
        except MlflowException as e:
            # Created meanwhile by a process no lock reached (a store over HTTP): use that one.
            if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
                raise
            return self.client.get_experiment_by_name(self.experiment).experiment_id

    def run_url(self, run_id: str) -> str:
        return f"{self.ui_url.rstrip('/')}/#/experiments/{self.experiment_id()}/runs/{run_id}"

    def _parent_run(self, dagster_run_id: str, job_name: str) -> str:
        lock = self._lock()
        with lock if lock else nullcontext():
            found = self.client.search_runs(
                [self.experiment_id()],
                filter_string=f"tags.`dagster.run_id` = '{dagster_run_id}' "
                "and tags.`alignment.level` = 'dagster-run'",
                max_results=1,
            )
            if found:
                return found[0].info.run_id
            run = self.client.create_run(
                self.experiment_id(),
                run_name=f"{job_name}-{dagster_run_id[:8]}",
                tags={
                    "dagster.run_id": dagster_run_id,
                    "dagster.job": job_name,
                    "alignment.level": "dagster-run",
                },
            )
            return run.info.run_id

    def close_dagster_run(self, dagster_run_id: str, status: str) -> str | None:
        """Give the MLflow runs of a Dagster run its final status (FAILED, KILLED, FINISHED): the parent, and
        any child still RUNNING (its step was killed before it could close it). Returns the parent's id, or
        None when the Dagster run logged nothing to MLflow. Each child closes its parent as FINISHED when
        it succeeds, so without this a cancelled run would look finished."""
        return self._close(dagster_run_id, status, None)

    def fail_step(self, dagster_run_id: str, op_name: str) -> str | None:
        """Mark one failed step's MLflow runs FAILED, finished or not (a step can fail after its run was
        closed, writing its output), and its Dagster run's parent run with them."""
        return self._close(dagster_run_id, "FAILED", op_name)

    def _close(self, dagster_run_id: str, status: str, op_name: str | None) -> str | None:
        found = self.client.search_runs(
            [self.experiment_id()],
            filter_string=f"tags.`dagster.run_id` = '{dagster_run_id}'",
            max_results=1000,
        )
        parent = None
        for run in found:
            if run.data.tags.get("alignment.level") == "dagster-run":
                parent = run.info.run_id
                self.client.set_terminated(parent, status)
            elif (
                run.info.status == "RUNNING"
                if op_name is None
                else run.data.tags.get("dagster.op") == op_name
            ):
                self.client.set_terminated(run.info.run_id, status)
        return parent

    @contextmanager
    def start_run(
        self,
        *,
        dagster_run_id: str,
        job_name: str,
        asset_key: str,
        partition_key: str | MultiPartitionKey | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> Iterator[TrackedRun]:
        """Open a child MLflow run for one asset materialization; failed if the body raises."""
        parent = self._parent_run(dagster_run_id, job_name)
        all_tags = {
            "dagster.run_id": dagster_run_id,
            "dagster.job": job_name,
            "dagster.asset_key": asset_key,
            "alignment.level": "asset",
            "mlflow.parentRunId": parent,
            **partition_tags(partition_key),
            **{k: str(v) for k, v in (tags or {}).items()},
        }
        name = asset_key + (f"[{partition_key}]" if partition_key else "")
        run = self.client.create_run(self.experiment_id(), run_name=name, tags=all_tags)
        tracked = TrackedRun(self.client, run.info.run_id, self.run_url(run.info.run_id))
        try:
            yield tracked
        except BaseException:
            self.client.set_terminated(run.info.run_id, "FAILED")
            self.client.set_terminated(parent, "FAILED")
            raise
        self.client.set_terminated(run.info.run_id, "FINISHED")
        if self.client.get_run(parent).info.status != "FAILED":
            self.client.set_terminated(parent, "FINISHED")

    def record(self, context: AssetExecutionContext, report: StageReport) -> dict[str, Any]:
        """Log a finished stage's report in the materialization's MLflow run; returns the Dagster metadata."""
        with self.asset_run(context, tags=report.tags) as run:
            return run.report(report)

    @contextmanager
    def asset_run(
        self, context: AssetExecutionContext, tags: Mapping[str, str] | None = None
    ) -> Iterator[TrackedRun]:
        """`start_run` with the Dagster run, job, asset and partition taken from the context."""
        pk = context.partition_key if context.has_partition_key else None
        keys = sorted(k.to_user_string() for k in context.selected_asset_keys)
        # A multi_asset's run is named after its op (its primary asset); all of its assets are tagged.
        asset_key = keys[0] if len(keys) == 1 else context.op_def.name
        with self.start_run(
            dagster_run_id=context.run.run_id,
            job_name=context.run.job_name,
            asset_key=asset_key,
            partition_key=pk,
            tags={"dagster.asset_keys": ",".join(keys), "dagster.op": context.op_def.name, **(tags or {})},
        ) as run:
            yield run


@failure_hook(required_resource_keys={"mlflow"})
def mlflow_step_failed(context: HookContext) -> None:
    """A failed step's MLflow runs (and its Dagster run's parent run) become FAILED, also when the step
    failed after its MLflow run was closed (writing its output) or before it opened one."""
    context.resources.mlflow.fail_step(context.run_id, context.op.name)
