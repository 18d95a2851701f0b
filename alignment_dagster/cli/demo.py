"""`alignment-dagster demo`: two rounds of the whole pipeline on embedded defaults, on a persistent instance.

The demo does what the daemon does, tick by tick (`cli.drive`): the library sensors add partitions and launch
the judging runs, and the automation refreshes datasets, models, evals and the comparison. Round 1 judges with
the embedded LLM judge and trains, among the blends, an RLHF baseline on the imported human labels; round 2 is
a new constitution version whose judge is round 1's registered baseline reward model, so its AI labels can
carry signal. Whether they may train is the judge signal gate's measured verdict, never a tuned threshold.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from alignment_dagster.cli.stores import SEED_CONSTITUTION
from alignment_dagster.core.redaction import redact_url

BASELINE_BLEND = "hh-baseline"  # its reward model judges round 2
# How preference_dataset words a refusal of AI labels (training.preference_data.PreferenceData.refusal).
GATE_REFUSALS = ("blocked by the judge signal gate: ", "blocked by the judge length-bias check: ")


def gate_block(result) -> str | None:
    """Why a judge gate (signal or length) refused this blend's preference_dataset, or None if none did."""
    for event in result.all_events:
        data = event.step_failure_data if event.event_type_value == "STEP_FAILURE" else None
        description = getattr(getattr(data, "user_failure_data", None), "description", None) or ""
        for phrase in GATE_REFUSALS:
            if phrase in description:
                return description.split(phrase, 1)[-1]
    return None


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
        "judge gate": f"{gate['verdict'].value} (n={gate['n'].value}, p={gate['p_value'].value:.3g})"
        if gate
        else "-",
    }


def latest_metadata(instance, asset: str, partition: str) -> dict:
    from dagster import AssetKey, AssetRecordsFilter

    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[partition]), limit=1
    ).records
    if not records:
        return {}
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def partition_row(instance, constitution: str, blend: str, refused: dict) -> dict:
    """A constitution x blend's dataset and models, or why the gate refused it."""
    from dagster import MultiPartitionKey

    key = str(MultiPartitionKey({"constitution": constitution, "blend": blend}))
    row = {"constitution": constitution, "blend": blend}
    if key in refused:
        return {**row, "rows": "refused by the judge gate"}
    data = latest_metadata(instance, "preference_dataset", key)
    row.update(
        {"rows": data.get("n_rows", "-"), **{f"from {k}": v for k, v in data.get("by_source", {}).items()}}
    )
    for asset, label, metric in (
        ("reward_model", "RM acc (held-out HH)", "hh_heldout.accuracy"),
        ("dpo_policy", "policy acc (eval)", "eval.accuracy"),
    ):
        meta = latest_metadata(instance, asset, key)
        value = meta.get("metrics", {}).get(metric)
        row[label] = (
            "not trained"
            if meta and not meta.get("trained")
            else f"{value:.2f}"
            if isinstance(value, float) and value == value
            else "-"
        )
    return row


def phase_one_row(instance, constitution: str) -> dict:
    """Constitutional AI phase 1 of a version: chains, accepted revisions, the audit, the SFT policy."""
    revisions = latest_metadata(instance, "revisions", constitution)
    data = latest_metadata(instance, "sft_dataset", constitution)
    policy = latest_metadata(instance, "sft_policy", constitution)
    evals = latest_metadata(instance, "sft_evals", constitution)
    win = evals.get("win_rate")
    return {
        "constitution": constitution,
        "chains": revisions.get("chains", "-"),
        "rounds": revisions.get("rounds", "-"),
        "accepted": revisions.get("accepted", "-"),
        "no change": f"{revisions['no_change_rate']:.2f}" if "no_change_rate" in revisions else "-",
        "SFT rows": data.get("n_rows", "refused" if revisions and not data else "-"),
        "audit": data.get("audit_verdict", "-"),
        "SFT policy": ("trained" if policy.get("trained") else "not trained") if policy else "-",
        "SFT win vs base": f"{win:.2f} {evals.get('win_ci', '')}" if isinstance(win, float) else "-",
    }


def refusals(results) -> dict[str, str]:
    """{partition key: the gate's reason} for the runs the judge signal gate refused."""
    return {
        str(r.dagster_run.tags.get("dagster/partition")): reason
        for r in results
        if (reason := gate_block(r)) is not None
    }


def print_round(driver, title: str, judged, settled, constitutions: list[str], blends: list[str]) -> None:
    rows = [
        judge_row(r.dagster_run.tags.get("dagster/partition"), r)
        for r in judged.results
        if r.success and r.asset_materializations_for_node("ai_preferences")
    ]
    if rows:
        print(f"\n[demo] {title}: judging\n{pd.DataFrame(rows).fillna(0).to_string(index=False)}")
    refused = refusals(settled.results)
    for key, reason in refused.items():
        print(f"[demo] {key}: blocked by a judge gate: {reason}")
    table = [partition_row(driver.instance, c, b, refused) for c in constitutions for b in blends]
    print(
        f"\n[demo] {title}: preference_dataset, reward_model, dpo_policy per constitution x blend:\n"
        f"{pd.DataFrame(table).fillna('').to_string(index=False)}"
    )
    phase_one = pd.DataFrame([phase_one_row(driver.instance, c) for c in constitutions])
    print(
        f"\n[demo] {title}: phase 1 (critique -> revision chains, the revision gate, SFT):\n"
        f"{phase_one.to_string(index=False)}"
    )


def print_comparison(defs) -> pd.DataFrame:
    from alignment_dagster.core.values import read_value
    from alignment_dagster.evaluation.side_by_side import KEY_COLUMNS, VERSION_TAGS, format_table

    try:
        table = read_value(defs.resources["storage"].open(), "comparison")
    except FileNotFoundError:
        print("\n[demo] comparison: not materialized (no evals partition finished)")
        return pd.DataFrame()
    print(
        "\n[demo] comparison: policy vs base per constitution x blend (* = best per metric; win = judge win "
        "rate, CI = 95% Wilson interval, reward diff = reward model policy - base):"
    )
    shown = format_table(table)
    versions = list(VERSION_TAGS.values())
    print(shown.drop(columns=versions).to_string(index=False) if len(shown) else "(no finished evals runs)")
    print(f"[demo] columns: {', '.join(f'{c.label} = {c.metric}' for c in KEY_COLUMNS)}")
    if len(shown):
        print("\n[demo] what each row was built from:")
        print(shown[["constitution", "blend", *versions]].to_string(index=False))
    return table


def round_two(folder: Path, first: str, registered: str) -> Path:
    """The next constitution version: round 1's file with its baseline reward model, pinned by version, as
    the judge (the LLM judge had no signal; the preference model abstains on prompts it trained on)."""
    source = folder / SEED_CONSTITUTION
    data = yaml.safe_load(source.read_text())
    data["name"] = f"{data['name']}-round2"
    data["description"] = f"{first} judged by round 1's RLHF baseline reward model {registered}."
    data["judge"] = {**data.get("judge", {}), "preference_model": registered, "use_llm_judge": False}
    path = folder / f"{Path(SEED_CONSTITUTION).stem}-round2.yaml"
    path.write_text(
        f"# Written by `alignment-dagster demo`: round 2 of the iterative loop.\n{yaml.safe_dump(data)}"
    )
    return path


def explain(table: pd.DataFrame) -> None:
    """Which comparison rows differ and why, in words."""
    if not len(table):
        return
    print("\n[demo] reading the comparison:")
    for row in table.to_dict("records"):
        if row["trained"] != "true":
            name = f"{row['constitution']} x {row['blend']}"
            print(f"[demo]   {name}: no trained policy (too few rows, or refused by the gate)")
            continue
        stale = " (kept by the retrain policy: stale)" if row["stale"] == "true" else ""
        print(
            f"[demo]   {row['constitution']} x {row['blend']}: policy {row['policy model']}{stale}, "
            f"trained on dataset {row['dataset']}"
        )
    trained = table[table["trained"] == "true"]
    shared = trained.groupby("dataset")["constitution"].nunique()
    for dataset in shared[shared > 1].index:
        print(
            f"[demo]   dataset {dataset} trained several rows (identical rows, reused weights): those rows "
            "differ only where their constitutions judge the evals differently"
        )


def setup(root_arg: str, quick: bool) -> tuple[Path, Path]:
    """The root's instance (PostgreSQL when ALIGNMENT_DAGSTER_POSTGRES_URL is set) and watched folder, and
    the environment the definitions read."""
    from alignment_dagster.cli.stores import ensure_root
    from alignment_dagster.core.settings import Settings

    root = Path(root_arg).expanduser().resolve()
    os.environ.update(
        {
            "ALIGNMENT_ROOT": str(root),
            "DAGSTER_HOME": str(root / "dagster_home"),
            "ALIGNMENT_PROFILE": "quick" if quick else "demo",
            "ALIGNMENT_CONSTITUTIONS_DIR": str(root / "constitutions"),
        }
    )
    _, folder = ensure_root(root, Settings.from_env())
    return root, folder


def print_where(settings, root: Path, seconds: float) -> None:
    print(f"\n[demo] done in {seconds:.1f}s")
    print(f"[demo] storage:   {settings.root}")
    print(f"[demo] MLflow:    {redact_url(settings.mlflow_uri)}  (experiment 'alignment-dagster')")
    print(f"[demo] Dagster:   DAGSTER_HOME={root / 'dagster_home'}")
    print("[demo] Look at it: `make dev` (Dagster UI on http://127.0.0.1:3000) and")
    print("[demo]             `make mlflow-ui` (MLflow UI on http://127.0.0.1:5000)")
    print(f"[demo] Compare again later: alignment-dagster compare --root {root}")


def run(args: argparse.Namespace) -> int:
    candidate = Path(args.root).expanduser().resolve()
    if candidate.exists() and not candidate.is_dir():
        print(f"alignment-dagster demo: --root {candidate} is a file, not a folder", file=sys.stderr)
        return 1
    root, folder = setup(args.root, args.quick)
    from dagster import DagsterInstance

    from alignment_dagster.cli.drive import Driver
    from alignment_dagster.core.settings import Settings
    from alignment_dagster.definitions import build_definitions

    settings = Settings.from_env()
    defs = build_definitions(settings)
    driver = Driver(defs, DagsterInstance.get())
    t0 = time.time()
    print(f"[demo] storage root: {settings.root}; profile {os.environ['ALIGNMENT_PROFILE']}")
    # The initial evaluation: partitions added from here on are new to the automation.
    driver.tick_automation()
    driver.tick_sensor("blend_sensor")
    blends = sorted(driver.instance.get_dynamic_partitions("blend"))
    judged = driver.tick_sensor("constitution_sensor")
    if judged.failed:
        print(f"[demo] judging failed: {judged.failed}", file=sys.stderr)
        return 1
    first = [k for k in driver.instance.get_dynamic_partitions("constitution")][-1]
    print_round(driver, "round 1", judged, driver.settle(), [first], blends)
    baseline = latest_metadata(driver.instance, "reward_model", f"{BASELINE_BLEND}|{first}")
    if not baseline.get("registered_model"):
        print(
            f"[demo] no trained {BASELINE_BLEND} reward model to judge round 2 with; stopping after round 1"
        )
        print_comparison(defs)
        return 1
    path = round_two(folder, first, baseline["registered_model"])
    print(
        f"\n[demo] round 2: {path.name}, judged by {baseline['registered_model']} (no clicks: the sensor and "
        "the automation take it from here)"
    )
    judged = driver.tick_sensor("constitution_sensor")
    second = driver.instance.get_dynamic_partitions("constitution")[-1]
    print_round(driver, "round 2", judged, driver.settle(), [second], blends)
    explain(print_comparison(defs))
    print_where(settings, root, time.time() - t0)
    return 0
