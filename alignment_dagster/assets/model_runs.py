"""What `reward_model` and `dpo_policy` share around their plain training stage: checkpoints in storage, one
MLflow run that trains, reports and registers the model, and the checkpoints' clean-up. Defines no asset."""

from collections.abc import Callable, Mapping
from typing import Any

from dagster import AssetExecutionContext

from alignment_dagster.core.storage import Storage
from alignment_dagster.core.values import ModelDir
from alignment_dagster.resources.storage_io import StorageResource
from alignment_dagster.resources.tracking import MLflowTracking
from alignment_dagster.training.artifacts import registered_model_name
from alignment_dagster.training.checkpoints import StorageCheckpoints
from alignment_dagster.training.stages import ModelOutcome


def checkpoints(
    context: AssetExecutionContext, storage: StorageResource, fingerprint: str
) -> StorageCheckpoints:
    """This partition's checkpoints for this fingerprint; those of earlier data or configs are deleted."""
    ckpts, stale = storage.checkpoints(context.asset_key.to_user_string(), context.partition_key, fingerprint)
    if stale:
        context.log.info(f"removed checkpoints of earlier data/configs: {stale}")
    return ckpts


def train_and_register(
    context: AssetExecutionContext,
    mlflow: MLflowTracking,
    ckpts: StorageCheckpoints,
    *,
    kind: str,
    store: Storage,
    tags: Mapping[str, str],
    params: Mapping[str, Any],
    register_tags: Mapping[str, str],
    fit: Callable[[StorageCheckpoints], ModelOutcome],
) -> ModelDir:
    """Run `fit` inside the materialization's MLflow run, register a trained model as a new version of
    `<kind>-<constitution>-<blend>` (its weights stored once, in `store`'s blobs, which the version and the
    partition's folder share), attach the report as metadata; a card-only folder when not trained."""
    keys = context.partition_key.keys_by_dimension
    with mlflow.asset_run(context, tags=tags) as run:
        run.log_params(params)
        outcome = fit(ckpts)
        report = outcome.report(str(context.partition_key))
        if outcome.trained:
            name = registered_model_name(kind, keys["constitution"], keys["blend"])
            version_tags = {"partition": str(context.partition_key), **register_tags}
            report.add(registered_model=run.register_model(outcome.model_dir, name, version_tags, store))
        meta = run.report(report)
    if outcome.trained:
        # the final model is about to be stored: its checkpoints would only resume a finished run
        ckpts.clear()
    else:
        context.log.warning(
            f"{context.asset_key.to_user_string()}[{context.partition_key}] not trained: "
            f"{outcome.card['skip_reason']}"
        )
    context.add_output_metadata(meta)
    return ModelDir(outcome.model_dir)
