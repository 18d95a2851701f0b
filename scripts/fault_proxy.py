#!/usr/bin/env python3
"""Fault-injecting HTTP proxy on loopback in front of an OpenAI-compatible server (429s, 500s, dropped
connections before/after the upstream answered, slow responses), drawn from a seeded schedule.

    .venv/bin/python scripts/fault_proxy.py http://127.0.0.1:8000 8100 --seed 7 --fault-rate 0.5

then point the openai backend at http://127.0.0.1:8100/v1. The proxy itself lives in
`alignment_dagster.testing.fault_proxy` (tests import `FaultProxy` from there); this is its command line.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignment_dagster.testing.fault_proxy import main

if __name__ == "__main__":
    main()
