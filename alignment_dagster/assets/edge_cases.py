"""`edge_cases` and `human_labels`: route the judge's weakest pairs to humans, collect and calibrate."""

import io

import pandas as pd
from dagster import AssetExecutionContext, Config, MetadataValue, asset
from pydantic import Field

from alignment_dagster.core.reporting import markdown_table
from alignment_dagster.core.storage import Storage
from alignment_dagster.human.labels import HUMAN_LABEL_COLUMNS
from alignment_dagster.human.routing import DEFAULT_AUDIT_SEED, route_edge_cases
from alignment_dagster.judge.gate import gate_comparisons
from alignment_dagster.partitions import constitution_partitions
from alignment_dagster.resources.storage_io import StorageResource
from alignment_dagster.resources.tracking import MLflowTracking
from alignment_dagster.specs.constitution import Constitution


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
    return pd.concat(frames, ignore_index=True).drop_duplicates(
        ["pair_id", "annotator", "choice", "labelled_at"]
    )


class EdgeCasesConfig(Config):
    audit_seed: str = Field(
        DEFAULT_AUDIT_SEED, description="Keep constant across versions to reuse audit labels."
    )


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
    cases = route_edge_cases(
        ai_preferences, response_pairs, c.routing, set(earlier["pair_id"]), config.audit_seed
    )
    # References the gate will have if every audit pair reused an earlier label; short of min_n: ask for more.
    have = len(gate_comparisons(ai_preferences, earlier, cases.loc[cases["audit"], "pair_id"], known_labels))
    gate_audit = max(0, c.judge.gate.min_n - have)
    if gate_audit:
        known_ids = (
            set(known_labels.loc[known_labels["label"].isin(["A", "B"]), "pair_id"])
            if len(known_labels)
            else set()
        )
        cases = route_edge_cases(
            ai_preferences,
            response_pairs,
            c.routing,
            set(earlier["pair_id"]),
            config.audit_seed,
            extra_audit=gate_audit,
            extra_audit_exclude=known_ids,
        )
    by_reason = {str(k): int(v) for k, v in cases["route_reason"].value_counts().items()}
    to_send = int(cases["send"].sum())
    with mlflow.asset_run(context, tags={"constitution.hash": c.content_hash}) as run:
        run.log_params({"routing": c.routing.model_dump(), "audit_seed": config.audit_seed})
        run.log_metrics(
            {
                "n_edge_cases": len(cases),
                "to_send": to_send,
                "audit": int(cases["audit"].sum()),
                "gate_references": have,
                "gate_audit_requested": gate_audit,
                "reused_earlier_labels": len(cases) - to_send,
                **{f"reason.{k}": v for k, v in by_reason.items()},
            }
        )
    context.add_output_metadata(
        {
            "n_edge_cases": len(cases),
            "to_send": to_send,
            "audit_slice": int(cases["audit"].sum()),
            "by_reason": MetadataValue.json(by_reason),
            "budget": c.routing.human_budget,
            # Undecided gate: how many more audit labels were asked for, so the next tick can decide.
            "judge_gate_references": have,
            "judge_gate_audit_requested": gate_audit,
            "judge_gate_audit_added": int((cases["route_reason"] == "gate_audit").sum()),
            "preview": MetadataValue.md(
                markdown_table(
                    cases[["pair_id", "route_reason", "priority", "category", "confidence", "audit", "send"]]
                )
            ),
            **run.metadata(),
        }
    )
    return cases
