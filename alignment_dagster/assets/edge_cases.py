"""`edge_cases`: the judge's weakest pairs routed to humans, plus a random audit slice."""

import pandas as pd
from dagster import AssetExecutionContext, Config, asset
from pydantic import Field

from alignment_dagster.human.collection import pooled_labels
from alignment_dagster.human.routing import DEFAULT_AUDIT_SEED, route_for_version
from alignment_dagster.partitions import constitution_partitions
from alignment_dagster.resources.storage_io import StorageResource
from alignment_dagster.resources.tracking import MLflowTracking
from alignment_dagster.specs.constitution import ConstitutionVersion


class EdgeCasesConfig(Config):
    audit_seed: str = Field(
        DEFAULT_AUDIT_SEED, description="Keep constant across versions to reuse audit labels."
    )


@asset(partitions_def=constitution_partitions, group_name="human", kinds={"parquet"})
def edge_cases(
    context: AssetExecutionContext,
    config: EdgeCasesConfig,
    constitution: ConstitutionVersion,
    ai_preferences: pd.DataFrame,
    response_pairs: pd.DataFrame,
    known_labels: pd.DataFrame,
    storage: StorageResource,
    mlflow: MLflowTracking,
) -> pd.DataFrame:
    """Pairs for human review (abstentions, low confidence, disagreement, always-human) plus a random audit
    slice, grown when the judge signal gate has too few reference labels to decide."""
    earlier = pooled_labels(storage.other_partitions("human_labels", context.partition_key).values())
    routing = route_for_version(
        ai_preferences, response_pairs, constitution.spec, earlier, known_labels, config.audit_seed
    )
    context.add_output_metadata(mlflow.record(context, routing.report(constitution.content_hash)))
    return routing.cases
