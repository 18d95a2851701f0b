"""benchmarks/routing.py scoring on real HH pairs with a hand-made judge: exact accuracies and coverage."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

from alignment_dagster.data.pairs import import_pairs
from alignment_dagster.specs.blend import Blend
from tests.conftest import REPO, SHARED_DATA

spec = importlib.util.spec_from_file_location("routing_benchmark", REPO / "benchmarks" / "routing.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


@pytest.fixture(scope="module")
def hh10():
    ps = import_pairs([str(SHARED_DATA)], lambda uri: Path(uri).read_bytes(), limit=10)
    return ps.pairs, ps.labels


def judge(pairs: pd.DataFrame, known: pd.DataFrame) -> pd.DataFrame:
    """Right and confident on pairs 0-5, wrong on 6-7 (confidence 0.3), abstaining on 8-9 (p_a 0.5)."""
    truth = known.set_index("pair_id")["label"]
    rows = []
    for i, pid in enumerate(pairs["pair_id"]):
        right = truth[pid]
        if i < 6:
            label, conf = right, 0.8
        elif i < 8:
            label, conf = ("B" if right == "A" else "A"), 0.3
        else:
            label, conf = "abstain", 0.0
        p_a = 0.5 if label == "abstain" else (0.5 + conf / 2 if label == "A" else 0.5 - conf / 2)
        rows.append(
            {
                "pair_id": pid,
                "label": label,
                "p_a": p_a,
                "p_chosen": max(p_a, 1 - p_a),
                "confidence": conf,
                "vote_share": 1.0,
                "abstain_reason": "order_inconsistent" if label == "abstain" else None,
            }
        )
    return pd.DataFrame(rows)


def test_scores_are_exact(hh10) -> None:
    pairs, known = hh10
    prefs = judge(pairs, known)
    blend = Blend(name="hybrid", ai_min_confidence=0.2)
    # No humans: 8 AI rows, 6 right; forced: 6 right + 2 abstentions at half = 7/10.
    assert bench.score(pairs, prefs, known, [], blend) == {
        "coverage": 0.8,
        "blend_accuracy": 0.75,
        "ai_rows": 8,
        "forced_accuracy": 0.7,
    }
    # Uncertainty routing with 4 labels: both abstentions, then the two wrong low-confidence pairs.
    routed = bench.uncertainty_routed(prefs, pairs, 4)
    assert set(routed) == set(pairs["pair_id"].iloc[6:10])
    assert bench.score(pairs, prefs, known, routed, blend) == {
        "coverage": 1.0,
        "blend_accuracy": 1.0,
        "ai_rows": 6,
        "forced_accuracy": 1.0,
    }
    table = bench.run_benchmark(pairs, prefs, known, blend, budgets=(0.0, 0.4), seeds=5)
    u = table[table["routing"] == "uncertainty"].set_index("budget")["forced_accuracy"]
    r = table[table["routing"] != "uncertainty"].set_index("budget")["forced_accuracy"]
    assert u[0.0] == r[0.0] == 0.7 and u[0.4] == 1.0 and r[0.4] < 1.0  # this judge's confidence has signal
    assert bench.markdown(table).splitlines()[0].startswith("| human budget | routing |")
