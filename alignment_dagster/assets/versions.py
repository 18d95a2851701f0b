"""`constitution` and `blend`: the validated YAML of one version (partition), from the watched libraries."""

from dagster import AssetExecutionContext, Config, DataVersion, Output, asset
from pydantic import Field

from alignment_dagster.core.keys import validate_key
from alignment_dagster.partitions import blend_partitions, constitution_partitions
from alignment_dagster.resources.libraries import BlendLibrary, ConstitutionLibrary
from alignment_dagster.resources.tracking import MLflowTracking
from alignment_dagster.specs.blend import BlendVersion
from alignment_dagster.specs.constitution import ConstitutionVersion


class ConstitutionConfig(Config):
    source: str | None = Field(
        None,
        description="File (path or s3:// URI) the sensor saw for this version; "
        "empty means: find the file whose content has this partition key.",
    )


@asset(partitions_def=constitution_partitions, group_name="constitution", kinds={"yaml"})
def constitution(
    context: AssetExecutionContext,
    config: ConstitutionConfig,
    constitution_library: ConstitutionLibrary,
    mlflow: MLflowTracking,
) -> Output[ConstitutionVersion]:
    """The validated constitution of this version: principles, weights and judge/routing settings."""
    key = validate_key(context.partition_key, "constitution partition key")
    source, raw, spec = constitution_library.version(key, config.source)
    version = ConstitutionVersion.of(spec, source, raw)
    return Output(
        version,
        data_version=DataVersion(version.content_hash),
        metadata=mlflow.record(context, version.report()),
    )


class BlendConfig(Config):
    source: str | None = Field(
        None,
        description="File (path or s3:// URI) the sensor saw for this blend; "
        "empty means: find the file whose name has this partition key.",
    )


@asset(partitions_def=blend_partitions, group_name="constitution", kinds={"yaml"})
def blend(
    context: AssetExecutionContext, config: BlendConfig, blend_library: BlendLibrary, mlflow: MLflowTracking
) -> Output[BlendVersion]:
    """The validated blend of this name: how AI, human and known labels mix; materialized when its file
    changes, so its preference datasets refresh (with no judge calls)."""
    key = validate_key(context.partition_key, "blend partition key")
    source, raw, spec = blend_library.version(key, config.source)
    version = BlendVersion.of(spec, source, raw)
    return Output(
        version,
        data_version=DataVersion(version.content_hash),
        metadata=mlflow.record(context, version.report()),
    )
