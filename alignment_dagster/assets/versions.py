"""`constitution` asset: the parsed, validated constitution of one version (partition)."""

from typing import Any

import pandas as pd
from dagster import AssetExecutionContext, Config, MetadataValue, asset
from pydantic import Field

from alignment_dagster.core.keys import validate_key
from alignment_dagster.core.reporting import markdown_table
from alignment_dagster.partitions import constitution_partitions
from alignment_dagster.resources.libraries import ConstitutionLibrary
from alignment_dagster.resources.tracking import MLflowTracking
from alignment_dagster.specs.constitution import ConstitutionError, parse_constitution


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
) -> dict[str, Any]:
    """The validated constitution of this version: principles, weights and judge/routing settings."""
    key = validate_key(context.partition_key, "constitution partition key")
    if config.source:
        raw = constitution_library.read(config.source)
        parsed = parse_constitution(raw, config.source)
        if parsed.partition_key != key:
            raise ConstitutionError(
                config.source,
                None,
                f"content now has key {parsed.partition_key}, not {key}: the file changed after the sensor "
                "saw it; the sensor starts a run for the new version",
            )
        source = config.source
    else:
        source, raw, parsed = constitution_library.find(key)

    record = {
        "partition_key": key,
        "content_hash": parsed.content_hash,
        "source": source,
        "yaml": raw.decode("utf-8"),
        "constitution": parsed.model_dump(mode="json"),
    }
    principles = pd.DataFrame(
        [
            {"id": p.id, "weight": p.weight, "applies_to": ", ".join(p.applies_to or ["all"]), "text": p.text}
            for p in parsed.principles
        ]
    )
    with mlflow.asset_run(
        context, tags={"constitution.hash": parsed.content_hash, "constitution.name": parsed.name}
    ) as run:
        run.log_params(
            {
                "constitution.name": parsed.name,
                "constitution.hash": parsed.content_hash,
                "constitution.source": source,
                "judge": parsed.judge.model_dump(),
                "routing": parsed.routing.model_dump(),
                "principle_weights": parsed.principle_weights(),
            }
        )
        run.log_metrics(
            {"n_principles": len(parsed.principles), "total_weight": sum(parsed.principle_weights().values())}
        )
        run.log_text("constitution.yaml", record["yaml"])
    context.add_output_metadata(
        {
            "name": parsed.name,
            "content_hash": parsed.content_hash,
            "source": source,
            "n_principles": len(parsed.principles),
            "principles": MetadataValue.md(markdown_table(principles, max_rows=50, max_chars=120)),
            "judge_settings": MetadataValue.json(parsed.judge.model_dump()),
            "routing_settings": MetadataValue.json(parsed.routing.model_dump()),
            **run.metadata(),
        }
    )
    return record
