"""`alignment-dagster` command line: demo, constitution validation."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def _cmd_validate(args: argparse.Namespace) -> int:
    from alignment_dagster.constitution import ConstitutionError, load_constitution

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
    "default": {"max_prompts": 12, "k": 2, "max_new_tokens": 64, "import_limit": 36},
    "quick": {"max_prompts": 2, "k": 2, "max_new_tokens": 16, "import_limit": 4},
}


def _quiet_run_config(extra: dict | None = None) -> dict:
    return {"loggers": {"console": {"config": {"log_level": "WARNING"}}}, **(extra or {})}


def _cmd_demo(args: argparse.Namespace) -> int:
    root = Path(args.root).expanduser().resolve()
    dagster_home = root / "dagster_home"
    dagster_home.mkdir(parents=True, exist_ok=True)
    os.environ["ALIGNMENT_ROOT"] = str(root)
    os.environ["DAGSTER_HOME"] = str(dagster_home)

    from dagster import AssetKey, DagsterInstance

    from alignment_dagster.constitution import parse_constitution
    from alignment_dagster.definitions import build_definitions
    from alignment_dagster.jobs import CONSTITUTION_ASSETS
    from alignment_dagster.library import plan_updates
    from alignment_dagster.partitions import constitution_partitions
    from alignment_dagster.settings import Settings

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
    print(f"[demo] materializing prompt_pool, response_pairs, known_labels ({'quick' if args.quick else 'default'} sizes) ...")
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
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        rows.append({"constitution": key, **{f"label {k}": v for k, v in sorted(m["labels"].value.items())},
                     "judge calls": m["model_calls"].value, "cache hits": m["cache_hits"].value,
                     "checks passed": f"{sum(checks.values())}/{len(checks)}"})
    import pandas as pd

    print("\n" + pd.DataFrame(rows).fillna(0).to_string(index=False))
    print(f"\n[demo] done in {time.time() - t0:.1f}s")
    print(f"[demo] constitution versions: {', '.join(sorted(versions))}")
    print(f"[demo] storage:   {settings.root}")
    print(f"[demo] MLflow:    {settings.mlflow_uri}  (experiment 'alignment-dagster')")
    print(f"[demo] Dagster:   DAGSTER_HOME={dagster_home}")
    print("[demo] Look at it: `make dev` (Dagster UI on http://127.0.0.1:3000) and")
    print("[demo]             `make mlflow-ui` (MLflow UI on http://127.0.0.1:5000)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignment-dagster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="materialize the pipeline on embedded defaults")
    demo.add_argument("--root", default=os.environ.get("ALIGNMENT_ROOT", ".alignment"), help="storage root")
    demo.add_argument("--quick", action="store_true", help="CI-sized run (a few pairs)")
    demo.set_defaults(func=_cmd_demo)

    validate = sub.add_parser("validate", help="validate constitution files and print their partition keys")
    validate.add_argument("files", nargs="+")
    validate.set_defaults(func=_cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
