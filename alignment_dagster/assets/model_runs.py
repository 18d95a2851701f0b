"""What `reward_model` and `dpo_policy` share around their plain training stage: the retrain policy against
the partition's current model, checkpoints in storage, one MLflow run that trains, reports and registers the
model, and the output's data version (the training fingerprint, so evals rerun only for a changed model).
Defines no asset."""

from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd
from dagster import AssetExecutionContext, DataVersion, MultiPartitionKey, Output

from alignment_dagster.core.keys import sha256_hex
from alignment_dagster.core.values import ModelDir, scratch_dir
from alignment_dagster.resources.storage_io import StorageResource
from alignment_dagster.resources.tracking import MLflowTracking
from alignment_dagster.specs.blend import Blend, RetrainPolicy
from alignment_dagster.training.artifacts import (
    MODEL_CARD,
    card_context,
    read_model_card,
    registered_model_name,
    write_model_card,
)
from alignment_dagster.training.checkpoints import StorageCheckpoints
from alignment_dagster.training.fingerprints import row_digests
from alignment_dagster.training.preference_data import dataset_version
from alignment_dagster.training.retrain import RetrainDecision, retrain_decision
from alignment_dagster.training.stages import ModelOutcome, keep_current

# Asset config fields that are not trainer settings (the rest go to the preset as overrides).
NOT_TRAINER_FIELDS = frozenset(
    {
        "preset",
        "base_model",
        "min_train_rows",
        "eval_limit",
        "reuse",
        "force_retrain",
        "max_steps",
        "max_length",
    }
)


def trainer_overrides(config) -> dict[str, Any]:
    """An asset config's trainer settings, for the preset to override (sizes are passed apart)."""
    return config.model_dump(exclude=NOT_TRAINER_FIELDS & set(type(config).model_fields))


def partition_dims(context: AssetExecutionContext) -> dict[str, str]:
    """The partition's keys by dimension: `constitution` (and `blend` for constitution x blend assets)."""
    key = context.partition_key
    return dict(key.keys_by_dimension) if isinstance(key, MultiPartitionKey) else {"constitution": key}


def checkpoints(
    context: AssetExecutionContext, storage: StorageResource, fingerprint: str
) -> StorageCheckpoints:
    """This partition's checkpoints for this fingerprint; those of earlier data or configs are deleted."""
    ckpts, stale = storage.checkpoints(context.asset_key.to_user_string(), context.partition_key, fingerprint)
    if stale:
        context.log.info(f"removed checkpoints of earlier data/configs: {stale}")
    return ckpts


def partition_card(context: AssetExecutionContext, blend: Blend, dataset: pd.DataFrame, **extra: Any) -> dict:
    """What the model card of this partition records about where it was trained."""
    keys = context.partition_key.keys_by_dimension
    return card_context(
        keys["constitution"],
        keys["blend"],
        blend.name,
        blend.content_hash,
        context.run_id,
        dataset_version(dataset),
        **extra,
    )


def current_decision(
    current, digests: list[str], blend: Blend | None, force: bool, fingerprint: str, base_identity: str | None
) -> RetrainDecision:
    """The retrain policy's decision against the partition's current model folder (None: there is none)."""
    card = read_model_card(current) if current is not None and (current / MODEL_CARD).is_file() else None
    policy = blend.retrain if blend is not None else RetrainPolicy()
    return retrain_decision(
        digests, card, policy, force, fingerprint=fingerprint, base_identity=base_identity
    )


def train_and_register(
    context: AssetExecutionContext,
    mlflow: MLflowTracking,
    storage: StorageResource,
    blend: Blend | None,
    *,
    kind: str,
    train: pd.DataFrame,
    fingerprint: str,
    force: bool,
    params: Mapping[str, Any],
    fit: Callable[[StorageCheckpoints], ModelOutcome],
    extra_tags: Mapping[str, str] | None = None,
    digests: list[str] | None = None,
    base_identity: str | None = None,
) -> Output[ModelDir] | None:
    """Train (`fit`) when the blend's retrain policy says so (the default policy without a blend), or keep
    the partition's current model; register a newly trained model as a version of
    `<kind>-<constitution>[-<blend>]` and attach the report as metadata. `digests`: the training rows as the
    retrain policy compares them (default: preference rows'). None when training would be identical to the
    current model's: nothing to materialize, so nothing downstream reruns (e.g. a blend that does not start
    from sft_policy, run again because its sft_policy changed)."""
    blend_tags = {"blend.name": blend.name, "blend.hash": blend.content_hash} if blend is not None else {}
    tags = {**blend_tags, **(extra_tags or {})}
    asset, keys = context.asset_key.to_user_string(), partition_dims(context)
    current = storage.stored_model(asset, context.partition_key)
    decision = current_decision(
        current, row_digests(train) if digests is None else digests, blend, force, fingerprint, base_identity
    )
    if decision.unchanged:
        context.log.info(f"{asset}[{context.partition_key}]: {decision.reason}; nothing to materialize")
        return None
    ckpts = checkpoints(context, storage, fingerprint)
    with mlflow.asset_run(context, tags=tags) as run:
        run.log_params({**params, "retrain": decision.reason})
        outcome = fit(ckpts) if decision.retrain else keep_current(current, scratch_dir(asset), decision)
        report = outcome.report(str(context.partition_key)).add(retrain=decision.reason)
        if outcome.trained and decision.retrain:
            name = registered_model_name(kind, keys["constitution"], keys.get("blend", ""))
            version_tags = {"partition": str(context.partition_key), **tags}
            # Weights stored once, in storage's blobs, which the version and the partition's folder share.
            registered = run.register_model(outcome.model_dir, name, version_tags, storage.open())
            outcome.card = write_model_card(
                outcome.model_dir, {**outcome.card, "registered_model": registered}
            )
            report.add(registered_model=registered)
        report.tags["alignment.registered_model"] = str(outcome.card.get("registered_model", ""))
        meta = run.report(report)
    if outcome.trained and decision.retrain:
        ckpts.clear()  # the final model is about to be stored: its checkpoints could only resume a done run
    elif not outcome.trained:
        context.log.warning(f"{asset}[{context.partition_key}] not trained: {outcome.card['skip_reason']}")
    version = (
        outcome.card.get("fingerprint") or f"untrained-{sha256_hex(outcome.card.get('skip_reason', ''))[:12]}"
    )
    return Output(ModelDir(outcome.model_dir), data_version=DataVersion(version), metadata=meta)
