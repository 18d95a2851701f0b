"""`alignment-dagster validate`: check constitution files and print their partition keys."""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    from alignment_dagster.specs.constitution import ConstitutionError, load_constitution

    status = 0
    for path in args.files:
        try:
            constitution = load_constitution(path)
        except ConstitutionError as e:
            print(f"INVALID {e}", file=sys.stderr)
            status = 1
            continue
        print(f"ok      {path}: {constitution.partition_key} ({len(constitution.principles)} principles)")
    return status
