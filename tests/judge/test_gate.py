"""The judge signal gate: the exact binomial test, verdicts, the comparisons it counts (audit, known)."""

from pathlib import Path

import pandas as pd
import pytest

from alignment_dagster.data.pairs import import_pairs
from alignment_dagster.judge.gate import (
    binomial_sf,
    gate_comparisons,
    gate_for_version,
    judge_gate,
    signal_gate,
)
from tests.conftest import SHARED_DATA


def test_binomial_sf_exact() -> None:
    assert binomial_sf(0, 10) == 1.0
    assert binomial_sf(10, 10) == pytest.approx(1 / 1024)
    assert binomial_sf(8, 10) == pytest.approx((45 + 10 + 1) / 1024)
    assert binomial_sf(11, 10) == 0.0
    assert binomial_sf(600, 1000) == pytest.approx(1.364e-10, rel=0.01)


def test_gate_pass_fail_undecided() -> None:
    assert signal_gate(40, 50).verdict == "pass"
    fail = signal_gate(26, 50)
    assert fail.verdict == "fail" and fail.p_value == pytest.approx(binomial_sf(26, 50))
    assert "not significantly above chance" in fail.reason
    small = signal_gate(9, 10, min_n=30)
    assert small.verdict == "undecided" and "30 needed" in small.reason
    assert signal_gate(0, 0).verdict == "undecided"


def _human(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "pair_id": p,
                "choice": c,
                "annotator": a,
                "labelled_at": "2025-01-01T00:00:00+00:00",
                "backend": "file_queue",
                "comment": None,
            }
            for p, c, a in rows
        ]
    )


def test_gate_comparisons_use_audit_and_known_labels_only() -> None:
    prefs = pd.DataFrame(
        {"pair_id": ["k1", "k2", "a1", "a2", "a3", "b1", "kx"], "p_a": [0.9, 0.5, 0.2, 0.7, 0.6, 0.1, 0.4]}
    )
    known = pd.DataFrame(
        {
            "pair_id": ["k1", "k2", "a1", "kx", "zz"],
            "label": ["A", "A", "A", "tie", "B"],
            "source_dataset": "hh",
        }
    )
    human = _human(
        [("a1", "B", "u1"), ("a2", "A", "u1"), ("a2", "B", "u2"), ("a3", "B", "u1"), ("b1", "B", "u1")]
    )
    got = gate_comparisons(prefs, human, ["a1", "a2", "a3"], known)
    # k2: p_a exactly 0.5 leans nowhere (a miss); a1: the audit label beats the known one; a2: a 1-1 split is
    # a tie (left out); b1: budget-routed, not audit (left out); kx: known tie (left out); zz: not judged.
    assert got.to_dict("records") == [
        {"pair_id": "k1", "judge": "A", "human": "A", "source": "known", "agree": True},
        {"pair_id": "k2", "judge": "none", "human": "A", "source": "known", "agree": False},
        {"pair_id": "a1", "judge": "B", "human": "B", "source": "audit", "agree": True},
        {"pair_id": "a3", "judge": "A", "human": "B", "source": "audit", "agree": False},
    ]
    report = judge_gate(got, min_n=4)
    assert (report.gate.n, report.gate.agreements, report.n_audit, report.n_known) == (4, 2, 2, 2)
    assert report.verdict == "fail" and report.gate.p_value == pytest.approx(11 / 16)
    # Cohen's kappa by hand on judge (A, none, B, A) vs human (A, A, B, B): p_o = 1/2,
    # p_e = (2*2 [A] + 1*2 [B] + 1*0 [none]) / 16 = 6/16, kappa = (8/16 - 6/16) / (10/16) = 0.2.
    assert report.kappa == pytest.approx(0.2)
    assert report.blocks_ai_labels and "AI-sourced blends are blocked" in report.reason


@pytest.fixture(scope="module")
def hh60() -> tuple[pd.DataFrame, pd.DataFrame]:
    ps = import_pairs([str(SHARED_DATA)], lambda uri: Path(uri).read_bytes(), limit=60)
    return ps.pairs, ps.labels


def test_gate_passes_a_judge_with_signal_on_real_labels(hh60) -> None:
    pairs, known = hh60
    # A judge that leans the human way on 45 of the 60 real pairs (the first 15 flipped), confidence modest.
    truth = known.set_index("pair_id")["label"]
    p_a = [
        (0.6 if truth[p] == "A" else 0.4) if i >= 15 else (0.4 if truth[p] == "A" else 0.6)
        for i, p in enumerate(pairs["pair_id"])
    ]
    prefs = pd.DataFrame({"pair_id": pairs["pair_id"], "p_a": p_a})
    no_cases = pd.DataFrame({"pair_id": [], "audit": []})
    report = gate_for_version(prefs, no_cases, pd.DataFrame(), known, alpha=0.05, min_n=30)
    assert report.verdict == "pass" and report.gate.n == 60 and report.gate.agreements == 45
    assert report.gate.p_value == pytest.approx(binomial_sf(45, 60)) and report.gate.p_value < 1e-4
    assert not report.blocks_ai_labels
    # The same judge with every lean flipped agrees 15/60: far from significant, so it fails.
    flipped = gate_for_version(prefs.assign(p_a=1 - prefs["p_a"]), no_cases, pd.DataFrame(), known, 0.05, 30)
    assert flipped.verdict == "fail" and flipped.gate.agreements == 15 and flipped.kappa < 0


def test_gate_undecided_with_too_few_labels_and_overrides(hh60) -> None:
    pairs, known = hh60
    prefs = pd.DataFrame({"pair_id": pairs["pair_id"], "p_a": 0.5 + 1e-6})  # leans A everywhere: no signal
    cases = pd.DataFrame({"pair_id": [], "audit": []})
    few = gate_for_version(prefs, cases, pd.DataFrame(), known.head(10), 0.05, 30)
    assert few.verdict == "undecided" and few.gate.n == 10 and not few.blocks_ai_labels
    assert "only 10 judge-human comparisons, 30 needed" in few.reason
    failed = gate_for_version(prefs, cases, pd.DataFrame(), known, 0.05, 30)
    assert failed.verdict == "fail" and failed.blocks_ai_labels
    by_blend = gate_for_version(
        prefs, cases, pd.DataFrame(), known, 0.05, 30, blend_override="pilot run, reviewed"
    )
    assert by_blend.verdict == "fail" and not by_blend.blocks_ai_labels
    assert (by_blend.override, by_blend.override_source) == ("pilot run, reviewed", "blend")
    assert "used anyway by the blend override: 'pilot run, reviewed'" in by_blend.reason
    both = gate_for_version(
        prefs, cases, pd.DataFrame(), known, 0.05, 30, constitution_override="c", blend_override="b"
    )
    assert both.override_source == "constitution"
    assert gate_for_version(
        prefs, cases, pd.DataFrame(), known, 0.05, 30, blend_override="  "
    ).blocks_ai_labels
