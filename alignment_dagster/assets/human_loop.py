"""`edge_cases` and `human_labels`: route the judge's weakest pairs to humans, collect and calibrate."""

import io

import pandas as pd
from dagster import AssetExecutionContext, Config, MetadataValue, asset
from pydantic import Field

from alignment_dagster.calibration import judge_human_agreement, reliability_plot
from alignment_dagster.constitution import Constitution
from alignment_dagster.human import HUMAN_LABEL_COLUMNS, aggregate_labels, inter_annotator_agreement
from alignment_dagster.judge.health import gate_comparisons
from alignment_dagster.partitions import constitution_partitions
from alignment_dagster.reporting import markdown_table, png_markdown
from alignment_dagster.resources.labelling import LabellingResource
from alignment_dagster.resources.storage import StorageResource
from alignment_dagster.resources.tracking import MLflowTracking
from alignment_dagster.routing import DEFAULT_AUDIT_SEED, route_edge_cases
from alignment_dagster.storage import Storage


def earlier_human_labels(store: Storage, exclude_key: str) -> pd.DataFrame:
    """Human labels stored for other constitution versions: a preference between two fixed replies does not
    depend on the constitution, so they are reused instead of asking again."""
    frames = []
    for key in store.list("human_labels"):
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == "data.parquet" and parts[1] != exclude_key:
            frames.append(pd.read_parquet(io.BytesIO(store.read_bytes(key))))
    if not frames:
        return pd.DataFrame(columns=HUMAN_LABEL_COLUMNS)
    return pd.concat(frames, ignore_index=True).drop_duplicates(["pair_id", "annotator", "choice", "labelled_at"])


class EdgeCasesConfig(Config):
    audit_seed: str = Field(DEFAULT_AUDIT_SEED, description="Keep constant across versions to reuse audit labels.")


@asset(partitions_def=constitution_partitions, group_name="human", kinds={"parquet"})
def edge_cases(
    context: AssetExecutionContext,
    config: EdgeCasesConfig,
    constitution: dict,
    ai_preferences: pd.DataFrame,
    response_pairs: pd.DataFrame,
    known_labels: pd.DataFrame,
    storage: StorageResource,
    mlflow: MLflowTracking,
) -> pd.DataFrame:
    """Pairs for human review (abstentions, low confidence, disagreement, always-human) plus a random audit slice,
    grown when the judge signal gate has too few reference labels to decide."""
    c = Constitution.model_validate(constitution["constitution"])
    earlier = earlier_human_labels(storage.open(), context.partition_key)
    cases = route_edge_cases(ai_preferences, response_pairs, c.routing, set(earlier["pair_id"]), config.audit_seed)
    # References the gate will have if every audit pair reused an earlier label; short of min_n: ask for more.
    have = len(gate_comparisons(ai_preferences, earlier, cases.loc[cases["audit"], "pair_id"], known_labels))
    gate_audit = max(0, c.judge.gate.min_n - have)
    if gate_audit:
        known_ids = set(known_labels.loc[known_labels["label"].isin(["A", "B"]), "pair_id"]) if len(known_labels) else set()
        cases = route_edge_cases(ai_preferences, response_pairs, c.routing, set(earlier["pair_id"]), config.audit_seed,
                                 extra_audit=gate_audit, extra_audit_exclude=known_ids)
    by_reason = {str(k): int(v) for k, v in cases["route_reason"].value_counts().items()}
    to_send = int(cases["send"].sum())
    with mlflow.asset_run(context, tags={"constitution.hash": c.content_hash}) as run:
        run.log_params({"routing": c.routing.model_dump(), "audit_seed": config.audit_seed})
        run.log_metrics({"n_edge_cases": len(cases), "to_send": to_send, "audit": int(cases["audit"].sum()),
                         "gate_references": have, "gate_audit_requested": gate_audit,
                         "reused_earlier_labels": len(cases) - to_send, **{f"reason.{k}": v for k, v in by_reason.items()}})
    context.add_output_metadata({
        "n_edge_cases": len(cases), "to_send": to_send, "audit_slice": int(cases["audit"].sum()),
        "by_reason": MetadataValue.json(by_reason), "budget": c.routing.human_budget,
        # Undecided gate: how many more audit labels were asked for, so the next tick can decide.
        "judge_gate_references": have, "judge_gate_audit_requested": gate_audit,
        "judge_gate_audit_added": int((cases["route_reason"] == "gate_audit").sum()),
        "preview": MetadataValue.md(markdown_table(cases[["pair_id", "route_reason", "priority", "category", "confidence",
                                                          "audit", "send"]])),
        **run.metadata(),
    })
    return cases


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
    collected = labelling.collect(context.partition_key, [p.text for p in c.principles], tasks, known_labels, store)
    earlier = earlier_human_labels(store, context.partition_key)
    # Every earlier label on a pair of this version carries over (routing never re-sends those pairs, so
    # without this a new version's human-only blend would lose them), except where one was collected now.
    fresh = set(collected.labels["pair_id"])
    reused = earlier[earlier["pair_id"].isin(set(ai_preferences["pair_id"])) & ~earlier["pair_id"].isin(fresh)]
    labels = pd.concat([collected.labels, reused], ignore_index=True).reindex(columns=HUMAN_LABEL_COLUMNS)
    aggregated = aggregate_labels(labels) if len(labels) else pd.DataFrame(columns=["pair_id", "choice"])
    iaa = inter_annotator_agreement(labels).as_dict() if len(labels) else {}
    audit_ids = list(edge_cases.loc[edge_cases["audit"].astype(bool), "pair_id"])
    report = judge_human_agreement(ai_preferences, labels, audit_ids)
    png = reliability_plot(report.table, f"Judge reliability, {context.partition_key}")
    calib = {k: v for k, v in report.metrics().items() if v is not None}
    with mlflow.asset_run(context, tags={"constitution.hash": c.content_hash,
                                         "labelling.backend": collected.info.get("backend", labelling.backend)}) as run:
        run.log_params({"labelling_backend": labelling.backend, **{f"labelling.{k}": v for k, v in collected.info.items()}})
        run.log_metrics({"n_labels": len(labels), "n_pairs_labelled": len(aggregated), "pending": len(collected.pending),
                         "reused": len(reused), **{f"audit.{k}": v for k, v in calib.items()},
                         **{f"iaa.{k}": v for k, v in iaa.items() if v is not None}})
        run.log_figure("reliability", png)
        run.log_table("reliability", report.table)
    context.add_output_metadata({
        "n_labels": len(labels), "pairs_labelled": len(aggregated), "pending": len(collected.pending),
        "reused_from_earlier_versions": len(reused), "labelling": MetadataValue.json(collected.info),
        "audit_calibration": MetadataValue.json(calib), "inter_annotator": MetadataValue.json(iaa),
        "reliability": MetadataValue.md(png_markdown(png, "reliability diagram")),
        **run.metadata(),
    })
    return labels
