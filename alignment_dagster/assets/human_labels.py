"""`human_labels`: the edge cases sent to the labelling backend, labels collected, agreement and calibration."""

import pandas as pd
from dagster import AssetExecutionContext, MetadataValue, asset

from alignment_dagster.assets.edge_cases import earlier_human_labels
from alignment_dagster.core.reporting import png_markdown
from alignment_dagster.human.agreement import aggregate_labels, inter_annotator_agreement
from alignment_dagster.human.calibration import judge_human_agreement, reliability_plot
from alignment_dagster.human.labels import HUMAN_LABEL_COLUMNS
from alignment_dagster.partitions import constitution_partitions
from alignment_dagster.resources.labelling import LabellingResource
from alignment_dagster.resources.storage_io import StorageResource
from alignment_dagster.resources.tracking import MLflowTracking
from alignment_dagster.specs.constitution import Constitution


@asset(partitions_def=constitution_partitions, group_name="human", kinds={"parquet"})
def human_labels(
    context: AssetExecutionContext,
    constitution: dict,
    edge_cases: pd.DataFrame,
    ai_preferences: pd.DataFrame,
    response_pairs: pd.DataFrame,
    known_labels: pd.DataFrame,
    labelling: LabellingResource,
    storage: StorageResource,
    mlflow: MLflowTracking,
) -> pd.DataFrame:
    """Human labels for this version's edge cases (plus reused earlier ones), with agreement and calibration."""
    c = Constitution.model_validate(constitution["constitution"])
    store = storage.open()
    tasks = edge_cases.merge(response_pairs[["pair_id", "prompt", "response_a", "response_b"]], on="pair_id")
    collected = labelling.collect(
        context.partition_key, [p.text for p in c.principles], tasks, known_labels, store
    )
    earlier = earlier_human_labels(store, context.partition_key)
    # Every earlier label on a pair of this version carries over (routing never re-sends those pairs, so
    # without this a new version's human-only blend would lose them), except where one was collected now.
    fresh = set(collected.labels["pair_id"])
    reused = earlier[
        earlier["pair_id"].isin(set(ai_preferences["pair_id"])) & ~earlier["pair_id"].isin(fresh)
    ]
    labels = pd.concat([collected.labels, reused], ignore_index=True).reindex(columns=HUMAN_LABEL_COLUMNS)
    aggregated = aggregate_labels(labels) if len(labels) else pd.DataFrame(columns=["pair_id", "choice"])
    iaa = inter_annotator_agreement(labels).as_dict() if len(labels) else {}
    audit_ids = list(edge_cases.loc[edge_cases["audit"].astype(bool), "pair_id"])
    report = judge_human_agreement(ai_preferences, labels, audit_ids)
    png = reliability_plot(report.table, f"Judge reliability, {context.partition_key}")
    calib = {k: v for k, v in report.metrics().items() if v is not None}
    with mlflow.asset_run(
        context,
        tags={
            "constitution.hash": c.content_hash,
            "labelling.backend": collected.info.get("backend", labelling.backend),
        },
    ) as run:
        run.log_params(
            {
                "labelling_backend": labelling.backend,
                **{f"labelling.{k}": v for k, v in collected.info.items()},
            }
        )
        run.log_metrics(
            {
                "n_labels": len(labels),
                "n_pairs_labelled": len(aggregated),
                "pending": len(collected.pending),
                "reused": len(reused),
                **{f"audit.{k}": v for k, v in calib.items()},
                **{f"iaa.{k}": v for k, v in iaa.items() if v is not None},
            }
        )
        run.log_figure("reliability", png)
        run.log_table("reliability", report.table)
    context.add_output_metadata(
        {
            "n_labels": len(labels),
            "pairs_labelled": len(aggregated),
            "pending": len(collected.pending),
            "reused_from_earlier_versions": len(reused),
            "labelling": MetadataValue.json(collected.info),
            "audit_calibration": MetadataValue.json(calib),
            "inter_annotator": MetadataValue.json(iaa),
            "reliability": MetadataValue.md(png_markdown(png, "reliability diagram")),
            **run.metadata(),
        }
    )
    return labels
