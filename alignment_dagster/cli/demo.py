"""`alignment-dagster demo`: the whole pipeline on embedded defaults, on a persistent Dagster instance.

It plans its partitions the way the sensors do (`WatchedLibrary.plan`), then runs the same jobs a sensor
would launch: shared inputs, each constitution version, each constitution x blend, the comparison.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from alignment_dagster.core.redaction import redact_url

# Demo presets for response_pairs: sampled train prompts plus imported pairs with known human labels.
DEMO_SIZES = {
    "default": {"max_prompts": 8, "k": 2, "max_new_tokens": 48, "import_limit": 24},
    "quick": {"max_prompts": 2, "k": 2, "max_new_tokens": 16, "import_limit": 4},
}
# Training settings per demo size (asset defaults otherwise); quick keeps CI's demo to seconds per partition.
DEMO_TRAINING = {
    "default": {"evals": {"config": {"max_prompts": 8, "max_new_tokens": 32}}},
    "quick": {
        "reward_model": {"config": {"max_steps": 4, "heldout_limit": 20}},
        "dpo_policy": {"config": {"max_steps": 2, "max_length": 128, "eval_limit": 2}},
        "evals": {"config": {"max_prompts": 4, "max_new_tokens": 16}},
    },
}
# How preference_dataset words a refusal of AI labels (training.preference_data.PreferenceData.refusal).
GATE_REFUSALS = ("blocked by the judge signal gate: ", "blocked by the judge length-bias check: ")


def quiet_run_config(extra: dict | None = None) -> dict:
    return {"loggers": {"console": {"config": {"log_level": "WARNING"}}}, **(extra or {})}


def training_columns(result) -> dict[str, str]:
    """Held-out figures of the trained models, or why a partition was not trained (too few rows)."""
    cols = {}
    for asset, label, metric in (
        ("reward_model", "reward acc (HH held-out)", "hh_heldout.accuracy"),
        ("dpo_policy", "policy acc (eval split)", "eval.accuracy"),
    ):
        mats = result.asset_materializations_for_node(asset)
        if not mats:
            continue
        meta = mats[0].metadata
        if not meta["trained"].value:
            cols[label] = "not trained"
        else:
            value = meta["metrics"].value.get(metric)
            cols[label] = f"{value:.2f}" if isinstance(value, float) and value == value else "n/a"
    return cols


def gate_block(result) -> str | None:
    """Why a judge gate (signal or length) refused this blend's preference_dataset, or None if none did."""
    for event in result.all_events:
        data = event.step_failure_data if event.event_type_value == "STEP_FAILURE" else None
        description = getattr(getattr(data, "user_failure_data", None), "description", None) or ""
        for phrase in GATE_REFUSALS:
            if phrase in description:
                return description.split(phrase, 1)[-1]
    return None


def add_versions(instance, library, partitions_name: str, kind: str) -> dict[str, Any]:
    """Every valid file of a watched library as a partition, planned as its sensor plans a first tick."""
    plan = library.plan({})
    for error in plan.errors:
        print(f"[demo] skipping invalid {kind}: {error}")
    instance.add_dynamic_partitions(partitions_name, list(plan.versions))
    return plan.versions


def materialize_shared(defs, instance, quick: bool) -> bool:
    from dagster import AssetKey

    print(
        f"[demo] materializing prompt_pool, response_pairs, known_labels ({'quick' if quick else 'default'} "
        "sizes) ..."
    )
    size = DEMO_SIZES["quick" if quick else "default"]
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance,
        asset_selection=[AssetKey(k) for k in ("prompt_pool", "response_pairs", "known_labels")],
        run_config=quiet_run_config({"ops": {"response_pairs": {"config": size}}}),
    )
    if result.success:
        meta = result.asset_materializations_for_node("prompt_pool")[0].metadata
        print(f"[demo]   {meta['n_prompts'].value} prompts, by category {meta['by_category'].value}")
        meta = result.asset_materializations_for_node("response_pairs")[0].metadata
        print(f"[demo]   {meta['n_pairs'].value} response pairs, by origin {meta['by_origin'].value}")
    return result.success


def judge_row(key: str, result) -> dict:
    meta = result.asset_materializations_for_node("ai_preferences")[0].metadata
    evaluations = result.get_asset_check_evaluations()
    checks = {e.check_name: e.passed for e in evaluations}
    gate = next((e.metadata for e in evaluations if e.check_name == "judge_signal"), {})
    return {
        "constitution": key,
        **{f"label {k}": v for k, v in sorted(meta["labels"].value.items())},
        "judge calls": meta["model_calls"].value,
        "cache hits": meta["cache_hits"].value,
        "checks passed": f"{sum(checks.values())}/{len(checks)}",
        "judge gate": f"{gate['verdict'].value} (n={gate['n'].value})" if gate else "-",
    }


def judge_versions(defs, instance, versions: dict) -> bool:
    """The constitution job per version, as `constitution_sensor` requests it; prints the judging table."""
    from dagster import AssetKey

    from alignment_dagster.jobs import CONSTITUTION_ASSETS

    job = defs.resolve_job_def("constitution_pipeline")
    rows = []
    for key, update in sorted(versions.items()):
        print(f"[demo] judging under constitution {key} ({update.source}) ...")
        result = job.execute_in_process(
            instance=instance,
            partition_key=key,
            asset_selection=[AssetKey(k) for k in CONSTITUTION_ASSETS],
            run_config=quiet_run_config({"ops": {"constitution": {"config": {"source": update.source}}}}),
            tags={"constitution.source": update.source},
        )
        if not result.success:
            return False
        rows.append(judge_row(key, result))
    print("\n" + pd.DataFrame(rows).fillna(0).to_string(index=False))
    return True


def blend_row(key: str, blend: str, result) -> dict | None:
    """One constitution x blend's row; None when the run failed for another reason than the gate."""
    blocked = gate_block(result)
    if blocked:
        # An AI-sourced blend over a judge that failed the gate: refused by design, reported, not fatal.
        print(f"[demo] {key} x {blend}: blocked by a judge gate: {blocked}")
        return {"constitution": key, "blend": blend, "rows": "blocked (judge gate)"}
    if not result.success:
        failure = next((e for e in result.all_events if e.event_type_value == "STEP_FAILURE"), None)
        print(
            f"[demo] blend run {key} x {blend} failed: "
            f"{failure.message if failure else 'see the Dagster UI'}",
            file=sys.stderr,
        )
        return None
    meta = result.asset_materializations_for_node("preference_dataset")[0].metadata
    return {
        "constitution": key,
        "blend": blend,
        "rows": meta["n_rows"].value,
        **{f"from {k}": v for k, v in meta["by_source"].value.items()},
        **training_columns(result),
    }


def train_blends(defs, instance, versions: dict, blends: list[str], quick: bool) -> bool:
    """The blend job per constitution x blend: dataset, reward model, policy, evals (no judge calls)."""
    from dagster import MultiPartitionKey

    job = defs.resolve_job_def("blend_pipeline")
    training = quiet_run_config({"ops": DEMO_TRAINING["quick" if quick else "default"]})
    rows = []
    for key in sorted(versions):
        for blend in blends:
            result = job.execute_in_process(
                instance=instance,
                run_config=training,
                raise_on_error=False,
                partition_key=MultiPartitionKey({"constitution": key, "blend": blend}),
            )
            row = blend_row(key, blend, result)
            if row is None:
                return False
            rows.append(row)
    print(
        "\n[demo] preference_dataset per constitution x blend (no judge calls), reward_model and "
        f"dpo_policy:\n"
        f"{pd.DataFrame(rows).to_string(index=False)}"
    )
    return True


def compare(defs, instance) -> bool:
    from dagster import AssetKey

    from alignment_dagster.evaluation.side_by_side import KEY_COLUMNS, format_table

    print("[demo] comparing evals across constitution versions x blends ...")
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[AssetKey("comparison")], run_config=quiet_run_config()
    )
    if not result.success:
        return False
    print(
        "\n[demo] evals: policy vs base per constitution x blend (* = best per metric; win = judge win "
        "rate,\n[demo] CI = 95% Wilson interval, reward diff = reward model policy - base, cost from "
        "configured prices):"
    )
    shown = format_table(result.output_for_node("comparison"))
    print(shown.to_string(index=False) if len(shown) else "(no finished evals runs)")
    print(f"[demo] columns: {', '.join(f'{c.label} = {c.metric}' for c in KEY_COLUMNS)}")
    return True


def print_where(settings, root: Path, versions: dict, seconds: float) -> None:
    print(f"\n[demo] done in {seconds:.1f}s")
    print(f"[demo] constitution versions: {', '.join(sorted(versions))}")
    print(f"[demo] storage:   {settings.root}")
    print(f"[demo] MLflow:    {redact_url(settings.mlflow_uri)}  (experiment 'alignment-dagster')")
    print(f"[demo] Dagster:   DAGSTER_HOME={root / 'dagster_home'}")
    print("[demo] Look at it: `make dev` (Dagster UI on http://127.0.0.1:3000) and")
    print("[demo]             `make mlflow-ui` (MLflow UI on http://127.0.0.1:5000)")
    print(f"[demo] Compare again later: alignment-dagster compare --root {root}")


def run(args: argparse.Namespace) -> int:
    root = Path(args.root).expanduser().resolve()
    (root / "dagster_home").mkdir(parents=True, exist_ok=True)
    os.environ["ALIGNMENT_ROOT"] = str(root)
    os.environ["DAGSTER_HOME"] = str(root / "dagster_home")

    from dagster import DagsterInstance

    from alignment_dagster.core.settings import Settings
    from alignment_dagster.definitions import build_definitions
    from alignment_dagster.partitions import blend_partitions, constitution_partitions

    settings = Settings.from_env()
    defs = build_definitions(settings)
    instance = DagsterInstance.get()
    t0 = time.time()
    print(f"[demo] storage root: {settings.root}")
    versions = add_versions(
        instance, defs.resources["constitution_library"], constitution_partitions.name, "constitution"
    )
    if not versions:
        print(f"[demo] no valid constitutions in {settings.constitutions_dir}", file=sys.stderr)
        return 1
    if not (materialize_shared(defs, instance, args.quick) and judge_versions(defs, instance, versions)):
        return 1
    blends = sorted(add_versions(instance, defs.resources["blend_library"], blend_partitions.name, "blend"))
    if not (train_blends(defs, instance, versions, blends, args.quick) and compare(defs, instance)):
        return 1
    print_where(settings, root, versions, time.time() - t0)
    return 0
