"""`alignment-dagster judge-eval`: the judge's agreement with known human labels, and its speed."""

from __future__ import annotations

import argparse
import sys
import time

BAD_ROWS_SHOWN = 5  # judge-eval prints the first few bad rows; the report counts them all


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _load(args: argparse.Namespace):
    """(imported pairs, constitution), or None after printing why not (one line each, on stderr, so that
    stdout stays one JSON object with --json)."""
    from alignment_dagster.core.settings import PROJECT_ROOT
    from alignment_dagster.core.storage import read_uri
    from alignment_dagster.data.pairs import import_pairs
    from alignment_dagster.specs.constitution import ConstitutionError, load_constitution

    imported = import_pairs([args.data], read_uri, limit=args.limit)
    unreadable = [b for b in imported.bad_rows if b.row is None and not imported.pairs.size]
    if unreadable:  # the file itself (missing, unknown format, too large): nothing to judge
        print(unreadable[0], file=sys.stderr)
        return None
    for bad in imported.bad_rows[:BAD_ROWS_SHOWN]:
        print(f"bad pair row skipped: {bad}", file=sys.stderr)
    if len(imported.bad_rows) > BAD_ROWS_SHOWN:
        print(f"... and {len(imported.bad_rows) - BAD_ROWS_SHOWN} more bad rows", file=sys.stderr)
    if imported.labels.empty:
        print(f"{args.data}: no pairs with known labels", file=sys.stderr)
        return None
    try:
        return imported, load_constitution(
            args.constitution or PROJECT_ROOT / "constitutions" / "constitutional-ai.yaml"
        )
    except ConstitutionError as e:
        print(f"INVALID {e}", file=sys.stderr)  # as `validate` reports it
        return None


def run(args: argparse.Namespace) -> int:
    import json

    from alignment_dagster.backends import BackendSpec, make_backend
    from alignment_dagster.human.calibration import agreement_metrics
    from alignment_dagster.judge.runner import judge_pairs
    from alignment_dagster.judge.templates import get_template

    loaded = _load(args)
    if loaded is None:
        return 1
    imported, constitution = loaded
    backend = make_backend(
        BackendSpec(
            kind=args.backend,
            model=args.model,
            base_url=args.base_url,
            served_model=args.served_model,
            api_key_env=args.api_key_env,
            batch_size=args.batch_size,
        )
    )
    template = get_template(args.template or constitution.judge.template)
    t0 = time.perf_counter()
    result = judge_pairs(imported.pairs, constitution, backend, template, progress=not args.json)
    seconds = time.perf_counter() - t0
    report = {
        **agreement_metrics(result.principles, result.pairs, imported.labels, imported.pairs),
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
