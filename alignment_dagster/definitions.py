"""Dagster definitions: assets, sensors and resources, chosen by `Settings` (environment)."""

from __future__ import annotations

import os

from dagster import ConfigurableResource, Definitions, EnvVar, in_process_executor
from pydantic import ValidationError

from alignment_dagster.assets.ai_preferences import ai_preferences
from alignment_dagster.assets.comparison import comparison
from alignment_dagster.assets.dpo_policy import dpo_policy
from alignment_dagster.assets.edge_cases import edge_cases
from alignment_dagster.assets.evals import evals
from alignment_dagster.assets.human_labels import human_labels
from alignment_dagster.assets.judge_signal import judge_signal
from alignment_dagster.assets.length_bias import length_bias
from alignment_dagster.assets.preference_dataset import preference_dataset
from alignment_dagster.assets.prompt_pool import prompt_pool
from alignment_dagster.assets.response_pairs import response_pairs
from alignment_dagster.assets.revisions import revisions
from alignment_dagster.assets.reward_model import reward_model
from alignment_dagster.assets.sft_dataset import sft_dataset
from alignment_dagster.assets.sft_evals import sft_evals
from alignment_dagster.assets.sft_policy import sft_policy
from alignment_dagster.assets.versions import blend, constitution
from alignment_dagster.automation import automation_sensor
from alignment_dagster.core.redaction import install_log_redaction
from alignment_dagster.core.settings import (
    COMPUTE_ENV,
    LABELLING_ENV,
    PROFILE_ENV,
    Settings,
    SettingsError,
    backend_env,
)
from alignment_dagster.jobs import blend_job, blend_version_job, constitution_job
from alignment_dagster.resources.compute import ComputeResource
from alignment_dagster.resources.datasets import ImportedPairs
from alignment_dagster.resources.labelling import LabellingResource
from alignment_dagster.resources.libraries import BlendLibrary, ConstitutionLibrary
from alignment_dagster.resources.models import ModelBackendResource
from alignment_dagster.resources.profile import RunProfile
from alignment_dagster.resources.storage_io import AlignmentIOManager, BoundedS3Resource, StorageResource
from alignment_dagster.resources.tracking import MLflowTracking, mlflow_step_failed
from alignment_dagster.sensors import (
    blend_sensor,
    constitution_sensor,
    human_labels_sensor,
    mlflow_cancelled_runs,
    mlflow_failed_runs,
)


def _from_env(
    resource: type[ConfigurableResource], fields: dict, env_names: dict[str, str]
) -> ConfigurableResource:
    """`resource(**fields)`, where a refused field names the environment variable it came from."""
    try:
        return resource(**fields)
    except ValidationError as e:
        err = e.errors()[0]
        var = env_names.get(err["loc"][0]) if err["loc"] else None
        if var is None:
            raise
        if err["type"] == "literal_error":
            raise ValueError(f"{var}={err['input']!r}: must be one of {err['ctx']['expected']}") from None
        # Not echoed: a value in the wrong variable may be a secret.
        raise ValueError(f"{var}: {err['msg']}") from None


def _tracking_uri(settings: Settings) -> str:
    """The MLflow URI as resource config: with credentials in it, the variable that holds it (a Dagster
    EnvVar, resolved at run time), so the password is never stored with a run."""
    if not settings.mlflow_uri_has_credentials:
        return settings.mlflow_uri
    if os.environ.get("ALIGNMENT_MLFLOW_URI") != settings.mlflow_uri:
        raise SettingsError(
            "ALIGNMENT_MLFLOW_URI: a tracking URI with credentials is read only from that environment "
            "variable at run time, and these settings did not come from it"
        )
    return EnvVar("ALIGNMENT_MLFLOW_URI")


def build_resources(settings: Settings) -> dict[str, object]:
    s3 = BoundedS3Resource(endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region)
    storage = StorageResource(base_uri=settings.root, s3=s3)
    return {
        "storage": storage,
        "io_manager": AlignmentIOManager(storage=storage),
        "mlflow": MLflowTracking(
            tracking_uri=_tracking_uri(settings),
            artifact_location=settings.mlflow_artifacts,
            ui_url=settings.mlflow_ui_url,
        ),
        "constitution_library": ConstitutionLibrary(
            folder=settings.constitutions_dir, s3_uri=settings.constitutions_s3_uri, s3=s3
        ),
        "blend_library": BlendLibrary(folder=settings.blends_dir, s3=s3),
        "policy_model": _from_env(ModelBackendResource, settings.policy_backend, backend_env("POLICY")),
        "judge_model": _from_env(ModelBackendResource, settings.judge_backend, backend_env("JUDGE")),
        "labelling": _from_env(LabellingResource, settings.labelling, LABELLING_ENV),
        "imported_pairs": ImportedPairs(sources=list(settings.import_pairs)),
        "profile": _from_env(RunProfile, settings.profile, PROFILE_ENV),
        "compute": _from_env(ComputeResource, settings.compute, COMPUTE_ENV),
    }


ASSETS = [
    prompt_pool,
    response_pairs,
    constitution,
    blend,
    ai_preferences,
    edge_cases,
    human_labels,
    revisions,
    sft_dataset,
    sft_policy,
    sft_evals,
    preference_dataset,
    reward_model,
    dpo_policy,
    evals,
    comparison,
]


def build_definitions(settings: Settings | None = None) -> Definitions:
    install_log_redaction()  # before anything logs: every record of this process is redacted
    settings = settings or Settings.from_env()
    return Definitions(
        # A step that fails after its MLflow run closed (writing its output) marks that run FAILED.
        assets=[a.with_hooks({mlflow_step_failed}) for a in ASSETS],
        asset_checks=[judge_signal, length_bias],
        jobs=[constitution_job, blend_job, blend_version_job],
        sensors=[
            constitution_sensor,
            blend_sensor,
            human_labels_sensor,
            automation_sensor,
            mlflow_cancelled_runs,
            mlflow_failed_runs,
        ],
        resources=build_resources(settings),
        # One process per run: its steps share the loaded models (a step per process would load each again);
        # heavy stages scale out through their backends and compute settings, not through step processes.
        executor=in_process_executor,
    )


defs = build_definitions()
