"""`alignment-dagster` command line: demo, compare, judge-eval, constitution validation, init-stores.

Every failure is one line on stderr (`alignment-dagster: error: ...`, redacted) and exit status 1, never a
traceback: a bad option value, an unreachable server, a storage root that is a file.
"""

from __future__ import annotations

import argparse
import os
import sys

from alignment_dagster.cli import compare, judge_eval, stores
from alignment_dagster.cli import demo as demo_command
from alignment_dagster.cli import validate as validate_command
from alignment_dagster.core.redaction import install_log_redaction, redact_text
from alignment_dagster.core.settings import default_root


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
    demo.set_defaults(func=demo_command.run)

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
    cmp.set_defaults(func=compare.run)

    je = sub.add_parser("judge-eval", help="measure the judge against known human labels (HH-RLHF JSONL)")
    je.add_argument("--data", required=True, help="HH-RLHF-format JSONL(.gz) or pair file with labels")
    je.add_argument("--limit", type=judge_eval.positive_int, default=100, help="pairs to judge (>= 1)")
    je.add_argument("--json", action="store_true", help="print one JSON object")
    je.add_argument("--constitution", help="constitution YAML (default: the constitutional-ai starter)")
    je.add_argument("--template", help="judge template id (default: the constitution's)")
    je.add_argument("--backend", default="transformers", choices=["transformers", "openai", "vllm"])
    je.add_argument("--model", help="model path or id (default: the embedded SmolLM2-135M-Instruct)")
    je.add_argument("--base-url", help="OpenAI-compatible server URL, e.g. http://127.0.0.1:8000/v1")
    je.add_argument("--served-model", help="model name on the server")
    je.add_argument("--api-key-env", help="environment variable holding the server's API key")
    je.add_argument("--batch-size", type=judge_eval.positive_int, default=16, help="prompts per batch (>= 1)")
    je.set_defaults(func=judge_eval.run)

    check = sub.add_parser("validate", help="validate constitution files and print their partition keys")
    check.add_argument("files", nargs="+")
    check.set_defaults(func=validate_command.run)

    init = sub.add_parser(
        "init-stores",
        help="prepare a storage root for runs: the Dagster instance (run queue; SQLite or PostgreSQL), the "
        "MLflow store and the watched constitutions folder (existing files are kept)",
    )
    init.add_argument(
        "--root",
        default=os.environ.get("ALIGNMENT_ROOT") or str(default_root()),
        help="storage root (default: ALIGNMENT_ROOT, else .alignment/ in the repo)",
    )
    init.add_argument("--home", help="the Dagster instance folder (default: <root>/dagster_home)")
    init.set_defaults(func=stores.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    install_log_redaction()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("alignment-dagster: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a command line reports, it does not dump tracebacks
        message = f"{e}" if isinstance(e, ValueError | OSError) else f"{type(e).__name__}: {e}"
        print(f"alignment-dagster: error: {redact_text(message)}", file=sys.stderr)
        return 1
