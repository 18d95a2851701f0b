"""`alignment-dagster` command line: demo, compare, judge-eval, constitution validation."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from alignment_dagster.core.redaction import redact_url
from alignment_dagster.core.settings import default_root


def _cmd_validate(args: argparse.Namespace) -> int:
    from alignment_dagster.specs.constitution import ConstitutionError, load_constitution

    status = 0
    for path in args.files:
        try:
            c = load_constitution(path)
        except ConstitutionError as e:
            print(f"INVALID {e}", file=sys.stderr)
            status = 1
            continue
        print(f"ok      {path}: {c.partition_key} ({len(c.principles)} principles)")
    return status


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


def _quiet_run_config(extra: dict | None = None) -> dict:
    return {"loggers": {"console": {"config": {"log_level": "WARNING"}}}, **(extra or {})}


def _training_columns(result) -> dict[str, str]:
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


def _gate_block(result) -> str | None:
    """Why the judge signal gate refused this blend's preference_dataset, or None if it did not."""
    for event in result.all_events:
        data = event.step_failure_data if event.event_type_value == "STEP_FAILURE" else None
        description = getattr(getattr(data, "user_failure_data", None), "description", None) or ""
        if "blocked by the judge signal gate" in description:
            return description.split("blocked by the judge signal gate: ", 1)[-1]
    return None


def _cmd_demo(args: argparse.Namespace) -> int:
    root = Path(args.root).expanduser().resolve()
    dagster_home = root / "dagster_home"
    dagster_home.mkdir(parents=True, exist_ok=True)
    os.environ["ALIGNMENT_ROOT"] = str(root)
    os.environ["DAGSTER_HOME"] = str(dagster_home)

    from dagster import AssetKey, DagsterInstance, MultiPartitionKey

    from alignment_dagster.core.settings import Settings
    from alignment_dagster.core.watched import plan_updates
    from alignment_dagster.definitions import build_definitions
    from alignment_dagster.jobs import CONSTITUTION_ASSETS
    from alignment_dagster.partitions import blend_partitions, constitution_partitions
    from alignment_dagster.specs.blend import parse_blend
    from alignment_dagster.specs.constitution import parse_constitution

    settings = Settings.from_env()
    defs = build_definitions(settings)
    library = defs.resources["constitution_library"]
    instance = DagsterInstance.get()
    t0 = time.time()

    print(f"[demo] storage root: {settings.root}")
    plan = plan_updates(library.files(), {}, parse_constitution)
    for error in plan.errors:
        print(f"[demo] skipping invalid constitution: {error}")
    versions = {u.parsed.partition_key: u for u in plan.updates}
    if not versions:
        print(f"[demo] no valid constitutions in {settings.constitutions_dir}", file=sys.stderr)
        return 1
    instance.add_dynamic_partitions(constitution_partitions.name, list(versions))

    size = DEMO_SIZES["quick" if args.quick else "default"]
    print(
        f"[demo] materializing prompt_pool, response_pairs, known_labels ({'quick' if args.quick else 'default'} sizes) ..."
    )
    global_job = defs.resolve_implicit_global_asset_job_def()
    result = global_job.execute_in_process(
        instance=instance,
        asset_selection=[AssetKey("prompt_pool"), AssetKey("response_pairs"), AssetKey("known_labels")],
        run_config=_quiet_run_config({"ops": {"response_pairs": {"config": size}}}),
    )
    if not result.success:
        return 1
    meta = result.asset_materializations_for_node("prompt_pool")[0].metadata
    print(f"[demo]   {meta['n_prompts'].value} prompts, by category {meta['by_category'].value}")
    pmeta = result.asset_materializations_for_node("response_pairs")[0].metadata
    print(f"[demo]   {pmeta['n_pairs'].value} response pairs, by origin {pmeta['by_origin'].value}")

    job = defs.resolve_job_def("constitution_pipeline")
    rows = []
    for key, update in sorted(versions.items()):
        print(f"[demo] judging under constitution {key} ({update.source}) ...")
        result = job.execute_in_process(
            instance=instance,
            partition_key=key,
            asset_selection=[AssetKey(k) for k in CONSTITUTION_ASSETS],
            run_config=_quiet_run_config({"ops": {"constitution": {"config": {"source": update.source}}}}),
            tags={"constitution.source": update.source},
        )
        if not result.success:
            return 1
        m = result.asset_materializations_for_node("ai_preferences")[0].metadata
        evaluations = result.get_asset_check_evaluations()
        checks = {e.check_name: e.passed for e in evaluations}
        gate = next((e.metadata for e in evaluations if e.check_name == "judge_signal"), {})
        rows.append(
            {
                "constitution": key,
                **{f"label {k}": v for k, v in sorted(m["labels"].value.items())},
                "judge calls": m["model_calls"].value,
                "cache hits": m["cache_hits"].value,
                "checks passed": f"{sum(checks.values())}/{len(checks)}",
                "judge gate": f"{gate['verdict'].value} (n={gate['n'].value})" if gate else "-",
            }
        )
    import pandas as pd

    print("\n" + pd.DataFrame(rows).fillna(0).to_string(index=False))

    blend_plan = plan_updates(defs.resources["blend_library"].files(), {}, parse_blend)
    for error in blend_plan.errors:
        print(f"[demo] skipping invalid blend: {error}")
    blends = sorted({u.parsed.partition_key for u in blend_plan.updates})
    instance.add_dynamic_partitions(blend_partitions.name, blends)
    blend_job = defs.resolve_job_def("blend_pipeline")
    training = {"ops": DEMO_TRAINING["quick" if args.quick else "default"]}
    rows = []
    for key in sorted(versions):
        for blend in blends:
            pk = MultiPartitionKey({"constitution": key, "blend": blend})
            result = blend_job.execute_in_process(
                instance=instance,
                partition_key=pk,
                run_config=_quiet_run_config(training),
                raise_on_error=False,
            )
            blocked = _gate_block(result)
            if blocked:
                # An AI-sourced blend over a judge that failed the gate: refused by design, reported, not fatal.
                print(f"[demo] {key} x {blend}: blocked by the judge signal gate: {blocked}")
                rows.append({"constitution": key, "blend": blend, "rows": "blocked (judge gate)"})
                continue
            if not result.success:
                failure = next((e for e in result.all_events if e.event_type_value == "STEP_FAILURE"), None)
                print(
                    f"[demo] blend run {key} x {blend} failed: {failure.message if failure else 'see the Dagster UI'}",
                    file=sys.stderr,
                )
                return 1
            m = result.asset_materializations_for_node("preference_dataset")[0].metadata
            rows.append(
                {
                    "constitution": key,
                    "blend": blend,
                    "rows": m["n_rows"].value,
                    **{f"from {k}": v for k, v in m["by_source"].value.items()},
                    **_training_columns(result),
                }
            )
    print(
        f"\n[demo] preference_dataset per constitution x blend (no judge calls), reward_model and dpo_policy:\n"
        f"{pd.DataFrame(rows).to_string(index=False)}"
    )
    print("[demo] comparing evals across constitution versions x blends ...")
    result = global_job.execute_in_process(
        instance=instance, asset_selection=[AssetKey("comparison")], run_config=_quiet_run_config()
    )
    if not result.success:
        return 1
    _print_comparison(result.output_for_node("comparison"))
    print(f"\n[demo] done in {time.time() - t0:.1f}s")
    print(f"[demo] constitution versions: {', '.join(sorted(versions))}")
    print(f"[demo] storage:   {settings.root}")
    print(f"[demo] MLflow:    {redact_url(settings.mlflow_uri)}  (experiment 'alignment-dagster')")
    print(f"[demo] Dagster:   DAGSTER_HOME={dagster_home}")
    print("[demo] Look at it: `make dev` (Dagster UI on http://127.0.0.1:3000) and")
    print("[demo]             `make mlflow-ui` (MLflow UI on http://127.0.0.1:5000)")
    print(f"[demo] Compare again later: alignment-dagster compare --root {root}")
    return 0


def _print_comparison(table) -> None:
    from alignment_dagster.evaluation.side_by_side import KEY_COLUMNS, format_table

    print(
        "\n[demo] evals: policy vs base per constitution x blend (* = best per metric; win = judge win rate,\n"
        "[demo] CI = 95% Wilson interval, reward diff = reward model policy - base, cost from configured prices):"
    )
    shown = format_table(table)
    print(shown.to_string(index=False) if len(shown) else "(no finished evals runs)")
    print(f"[demo] columns: {', '.join(f'{c.label} = {c.metric}' for c in KEY_COLUMNS)}")


def _cmd_compare(args: argparse.Namespace) -> int:
    from mlflow.tracking import MlflowClient

    from alignment_dagster.core.settings import Settings
    from alignment_dagster.evaluation.side_by_side import (
        comparison_plot,
        comparison_table,
        format_table,
        latest_eval_runs,
    )

    if args.root:
        os.environ["ALIGNMENT_ROOT"] = str(Path(args.root).expanduser().resolve())
    settings = Settings.from_env()
    uri = args.tracking_uri or settings.mlflow_uri
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        print(
            f"no MLflow experiment {args.experiment!r} at {redact_url(uri)}; run the pipeline "
            "(or `alignment-dagster demo`) first",
            file=sys.stderr,
        )
        return 1
    table = comparison_table(latest_eval_runs(client, experiment.experiment_id))
    if table.empty:
        print(
            f"no finished evals runs in experiment {args.experiment!r} at {redact_url(uri)}", file=sys.stderr
        )
        return 1
    print(format_table(table).to_string(index=False))
    if args.csv:
        table.to_csv(args.csv, index=False)
        print(f"table: {args.csv}")
    if args.plot:
        Path(args.plot).write_bytes(comparison_plot(table))
        print(f"plot:  {args.plot}")
    return 0


BAD_ROWS_SHOWN = 5  # judge-eval prints the first few bad rows; the report counts them all


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _cmd_judge_eval(args: argparse.Namespace) -> int:
    import json

    from alignment_dagster.backends import BackendSpec, make_backend
    from alignment_dagster.core.settings import PROJECT_ROOT
    from alignment_dagster.data.pairs import import_pairs
    from alignment_dagster.human.calibration import agreement_metrics
    from alignment_dagster.judge.runner import judge_pairs
    from alignment_dagster.judge.templates import get_template
    from alignment_dagster.specs.constitution import ConstitutionError, load_constitution

    try:
        imported = import_pairs([args.data], lambda p: Path(p).read_bytes(), limit=args.limit)
    except OSError as e:
        print(f"{args.data}: cannot read file ({e.strerror})", file=sys.stderr)
        return 1
    except ValueError as e:  # a file format it cannot read; the message names the file
        print(e, file=sys.stderr)
        return 1
    # stderr, so that stdout stays one JSON object with --json
    for bad in imported.bad_rows[:BAD_ROWS_SHOWN]:
        print(f"bad pair row skipped: {bad}", file=sys.stderr)
    if len(imported.bad_rows) > BAD_ROWS_SHOWN:
        print(f"... and {len(imported.bad_rows) - BAD_ROWS_SHOWN} more bad rows", file=sys.stderr)
    if imported.labels.empty:
        print(f"{args.data}: no pairs with known labels", file=sys.stderr)
        return 1
    try:
        constitution = load_constitution(
            args.constitution or PROJECT_ROOT / "constitutions" / "constitutional-ai.yaml"
        )
    except ConstitutionError as e:
        print(f"INVALID {e}", file=sys.stderr)  # as `validate` reports it
        return 1
    spec = BackendSpec(
        kind=args.backend,
        model=args.model,
        base_url=args.base_url,
        served_model=args.served_model,
        api_key_env=args.api_key_env,
        batch_size=args.batch_size,
    )
    backend = make_backend(spec)
    template = get_template(args.template or constitution.judge.template)
    t0 = time.perf_counter()
    result = judge_pairs(imported.pairs, constitution, backend, template, progress=not args.json)
    seconds = time.perf_counter() - t0
    metrics = agreement_metrics(result.principles, result.pairs, imported.labels, imported.pairs)
    report = {
        **metrics,
        "pairs_per_second": len(imported.pairs) / seconds if seconds > 0 else float("nan"),
        "judge_prompts": result.stats.model_calls,
        "seconds": seconds,
        "judge_id": backend.identity,
        "template_version": template.version,
        "constitution": constitution.partition_key,
        "data": args.data,
        "bad_rows": len(imported.bad_rows),
    }
    if args.json:
        # Strict JSON: an undefined figure (e.g. agreement with zero coverage) is null, not NaN.
        print(json.dumps({k: None if isinstance(v, float) and v != v else v for k, v in report.items()}))
    else:
        for k, v in report.items():
            print(f"{k:>26}: {v:.4f}" if isinstance(v, float) else f"{k:>26}: {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignment-dagster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="materialize the pipeline on embedded defaults")
    demo.add_argument(
        "--root",
        default=os.environ.get("ALIGNMENT_ROOT") or str(default_root()),
        help="storage root (default: ALIGNMENT_ROOT, else .alignment/ in the repo)",
    )
    demo.add_argument("--quick", action="store_true", help="CI-sized run (a few pairs)")
    demo.set_defaults(func=_cmd_demo)

    cmp = sub.add_parser(
        "compare", help="evals metrics side by side over constitution versions x blends (MLflow)"
    )
    cmp.add_argument("--root", help="storage root whose MLflow store to read (default: ALIGNMENT_ROOT)")
    cmp.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: ALIGNMENT_MLFLOW_URI / the storage root's)"
    )
    cmp.add_argument("--experiment", default="alignment-dagster", help="MLflow experiment name")
    cmp.add_argument("--csv", help="also write the table (raw numbers) to this CSV file")
    cmp.add_argument("--plot", help="also write the win-rate plot to this PNG file")
    cmp.set_defaults(func=_cmd_compare)

    je = sub.add_parser("judge-eval", help="measure the judge against known human labels (HH-RLHF JSONL)")
    je.add_argument("--data", required=True, help="HH-RLHF-format JSONL(.gz) or pair file with labels")
    je.add_argument("--limit", type=positive_int, default=100, help="pairs to judge (>= 1)")
    je.add_argument("--json", action="store_true", help="print one JSON object")
    je.add_argument("--constitution", help="constitution YAML (default: the constitutional-ai starter)")
    je.add_argument("--template", help="judge template id (default: the constitution's)")
    je.add_argument("--backend", default="transformers", choices=["transformers", "openai", "vllm"])
    je.add_argument("--model", help="model path or id (default: the embedded SmolLM2-135M-Instruct)")
    je.add_argument("--base-url", help="OpenAI-compatible server URL, e.g. http://127.0.0.1:8000/v1")
    je.add_argument("--served-model", help="model name on the server")
    je.add_argument("--api-key-env", help="environment variable holding the server's API key")
    je.add_argument("--batch-size", type=int, default=16)
    je.set_defaults(func=_cmd_judge_eval)

    validate = sub.add_parser("validate", help="validate constitution files and print their partition keys")
    validate.add_argument("files", nargs="+")
    validate.set_defaults(func=_cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
