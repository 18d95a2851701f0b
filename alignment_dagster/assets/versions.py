"""`constitution` asset: the validated constitution of one version (partition), from the watched library."""

from dagster import AssetExecutionContext, Config, asset
from pydantic import Field

from alignment_dagster.core.keys import validate_key
from alignment_dagster.partitions import constitution_partitions
from alignment_dagster.resources.libraries import ConstitutionLibrary
from alignment_dagster.resources.tracking import MLflowTracking
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
) -> ConstitutionVersion:
    """The validated constitution of this version: principles, weights and judge/routing settings."""
    key = validate_key(context.partition_key, "constitution partition key")
    source, raw, spec = constitution_library.version(key, config.source)
    version = ConstitutionVersion.of(spec, source, raw)
    context.add_output_metadata(mlflow.record(context, version.report()))
    return version
