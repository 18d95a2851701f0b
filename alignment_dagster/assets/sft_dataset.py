"""`sft_dataset` [constitution]: the accepted revisions as conversational SFT rows, after the human audit of
a slice of them passed the judge signal gate or could not decide it (`revision.phase_one`)."""

import pandas as pd
from dagster import AssetExecutionContext, AssetIn, DataVersion, Failure, Output, asset

from alignment_dagster.automation import refresh_eagerly
from alignment_dagster.partitions import constitution_partitions
from alignment_dagster.resources.labelling import LabellingResource
from alignment_dagster.resources.storage_io import StorageResource
from alignment_dagster.resources.tracking import MLflowTracking
from alignment_dagster.revision.phase_one import sft_dataset_for_version, sft_version
from alignment_dagster.specs.constitution import ConstitutionVersion


@asset(
    partitions_def=constitution_partitions,
    ins={"constitution": AssetIn(), "revisions": AssetIn()},
    group_name="phase1",
    kinds={"parquet"},
    automation_condition=refresh_eagerly(),
)
def sft_dataset(
    context: AssetExecutionContext,
    constitution: ConstitutionVersion,
    revisions: pd.DataFrame,
    labelling: LabellingResource,
    storage: StorageResource,
    mlflow: MLflowTracking,
) -> Output[pd.DataFrame]:
    """Each chain's best accepted revision as `messages` (user, assistant), with its original and the judge's
    soft label; refused when people answering the audit ("original or revision?") disagree with the judge
    (judge signal gate failed). Materialize it again once audit answers arrive."""
    data = sft_dataset_for_version(
        constitution.spec, context.partition_key, revisions, labelling.target(), storage.open()
    )
    report = data.report()
    with mlflow.asset_run(context, tags=report.tags) as run:
        meta = run.report(report)
        if data.refused:  # inside the run: MLflow marks it FAILED with the reason in its tags
            raise Failure(
                description=data.refusal(), metadata={**data.verdict.gate.metadata(), **run.metadata()}
            )
    if data.verdict.gate.verdict == "undecided" and len(data.dataset):
        context.log.warning(f"sft_dataset[{context.partition_key}]: {data.verdict.accepted_on}")
    return Output(data.dataset, data_version=DataVersion(sft_version(data.dataset)), metadata=meta)
