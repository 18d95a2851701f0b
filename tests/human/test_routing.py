"""Edge-case routing on small hand-made frames, with exact expected rows."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from alignment_dagster.human.routing import EDGE_CASE_COLUMNS, audit_size, draw_audit, route_edge_cases
from alignment_dagster.specs.constitution import RoutingSettings

# pair_id, label, confidence, abstain_reason, category
PREFS = [
    ("p1", "A", 0.90, None, "helpful"),
    ("p2", "abstain", 0.10, "order_inconsistent", "helpful"),
    ("p3", "B", 0.30, None, "medical"),
    ("p4", "abstain", 0.05, "disagreement", "helpful"),
    ("p5", "A", 0.25, None, "helpful"),
    ("p6", "abstain", 0.02, "low_confidence", "helpful"),
    ("p7", "B", 0.60, None, "helpful"),
    ("p8", "A", 0.25, None, "helpful"),
]


def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    prefs = pd.DataFrame(
        [
            {"pair_id": p, "label": lab, "confidence": c, "abstain_reason": r, "p_chosen": (1 + c) / 2}
            for p, lab, c, r, _ in PREFS
        ]
    )
    pairs = pd.DataFrame([{"pair_id": p, "category": cat} for p, *_, cat in PREFS])
    return prefs, pairs


def rows(df: pd.DataFrame) -> list[tuple]:
    return [(r.pair_id, r.route_reason, r.priority, r.audit, r.send) for r in df.itertuples()]


def test_tiers_in_priority_order_when_budget_covers_everything():
    prefs, pairs = frames()
    out = route_edge_cases(
        prefs, pairs, RoutingSettings(human_budget=10, audit_fraction=0.0, always_human=["medical"])
    )
    assert list(out.columns) == EDGE_CASE_COLUMNS
    assert rows(out) == [
        ("p3", "always_human", 0, False, True),
        ("p6", "abstain:low_confidence", 1, False, True),
        ("p2", "abstain:order_inconsistent", 2, False, True),
        ("p4", "disagreement", 3, False, True),
        ("p5", "low_confidence", 4, False, True),  # equal confidence: pair_id breaks the tie
        ("p8", "low_confidence", 5, False, True),
        ("p7", "low_confidence", 6, False, True),
        ("p1", "low_confidence", 7, False, True),
    ]
    assert out.loc[0, "category"] == "medical" and out.loc[0, "ai_label"] == "B"
    assert out.loc[1, "abstain_reason"] == "low_confidence" and out.loc[1, "confidence"] == 0.02


def test_budget_cuts_and_audit_is_added_on_top():
    prefs, pairs = frames()
    # Audit draw order with the default seed over labelled pairs {p1,p3,p5,p7,p8} is p5, p7, p8, p1, p3
    # (asserted below); 0.25 * 5 = 1.25 -> 2 audit pairs: p5 (already in the budget) and p7 (added).
    s = RoutingSettings(human_budget=5, audit_fraction=0.25, always_human=["medical"])
    out = route_edge_cases(prefs, pairs, s)
    assert rows(out) == [
        ("p3", "always_human", 0, False, True),
        ("p6", "abstain:low_confidence", 1, False, True),
        ("p2", "abstain:order_inconsistent", 2, False, True),
        ("p4", "disagreement", 3, False, True),
        ("p5", "low_confidence", 4, True, True),
        ("p7", "audit", 5, True, True),
    ]
    assert int(out["send"].sum()) == 6  # budget 5 + 1 audit-only pair: the audit did not eat the budget
    no_audit = route_edge_cases(prefs, pairs, s.model_copy(update={"audit_fraction": 0.0}))
    assert rows(no_audit) == [r[:3] + (False, True) for r in rows(out)[:5]]


def test_audit_draw_is_a_hash_order_independent_of_confidence():
    labelled = ["p1", "p3", "p5", "p7", "p8"]
    by_hash = sorted(labelled, key=lambda p: hashlib.sha256(f"audit-v1:{p}".encode()).hexdigest())
    assert by_hash == ["p5", "p7", "p8", "p1", "p3"]
    assert draw_audit(labelled, 1.0) == by_hash
    assert draw_audit(labelled, 0.5) == ["p5", "p7", "p8"]
    assert draw_audit(reversed(labelled), 0.5) == ["p5", "p7", "p8"]  # input order does not matter
    assert draw_audit(labelled, 0.5, seed="other") == ["p8", "p7", "p3"]
    assert draw_audit(labelled, 0.0) == []
    assert [audit_size(100, 0.05), audit_size(7, 0.05), audit_size(0, 0.05), audit_size(3, 1.0)] == [
        5,
        1,
        0,
        3,
    ]

    # Changing every confidence leaves the audit untouched.
    prefs, pairs = frames()
    s = RoutingSettings(human_budget=0, audit_fraction=0.5)
    flipped = prefs.assign(confidence=1.0 - prefs["confidence"])
    assert (
        rows(route_edge_cases(prefs, pairs, s))
        == rows(route_edge_cases(flipped, pairs, s))
        == [
            ("p5", "audit", 0, True, True),
            ("p7", "audit", 1, True, True),
            ("p8", "audit", 2, True, True),
        ]
    )


def test_already_labelled_pairs_use_no_budget_and_audit_reuses_their_labels():
    prefs, pairs = frames()
    s = RoutingSettings(human_budget=5, audit_fraction=0.25, always_human=["medical"])
    out = route_edge_cases(prefs, pairs, s, already_labelled={"p6", "p7"})
    assert rows(out) == [
        ("p3", "always_human", 0, False, True),
        ("p2", "abstain:order_inconsistent", 1, False, True),
        ("p4", "disagreement", 2, False, True),
        ("p5", "low_confidence", 3, True, True),
        ("p8", "low_confidence", 4, False, True),  # p6 is skipped, so the budget reaches p8
        ("p7", "audit", 5, True, False),  # still in the audit, label reused, not sent again
    ]


def test_zero_budget_and_empty_inputs():
    prefs, pairs = frames()
    assert rows(route_edge_cases(prefs, pairs, RoutingSettings(human_budget=0, audit_fraction=0.0))) == []
    empty = route_edge_cases(prefs.iloc[:0], pairs.iloc[:0], RoutingSettings())
    assert list(empty.columns) == EDGE_CASE_COLUMNS and len(empty) == 0


def test_bad_inputs_are_named():
    prefs, pairs = frames()
    with pytest.raises(ValueError, match=r"1 pair_id\(s\) not in response_pairs, e.g. 'p8'"):
        route_edge_cases(prefs, pairs[pairs.pair_id != "p8"], RoutingSettings())
    with pytest.raises(ValueError, match="pair_id 'p1' appears more than once"):
        route_edge_cases(pd.concat([prefs, prefs.iloc[:1]]), pairs, RoutingSettings())
    with pytest.raises(ValueError, match=r"missing column\(s\) \['confidence'\]"):
        route_edge_cases(prefs.drop(columns="confidence"), pairs, RoutingSettings())


def test_gate_audit_tops_up_in_hash_order_from_every_judged_pair():
    prefs, pairs = frames()
    s = RoutingSettings(human_budget=1, audit_fraction=0.2)  # 5 labelled -> 1 audit pair
    base = route_edge_cases(prefs, pairs, s)
    audit = set(base.loc[base["audit"], "pair_id"])
    order = sorted((p for p, *_ in PREFS), key=lambda p: hashlib.sha256(f"audit-v1:{p}".encode()).hexdigest())
    exclude = {"p3", "p8"}  # e.g. pairs whose label is already known
    expected = [p for p in order if p not in audit | exclude][:3]
    out = route_edge_cases(
        prefs, pairs, s, already_labelled={expected[0]}, extra_audit=3, extra_audit_exclude=exclude
    )
    # The budget and the first audit slice are untouched; the top-up follows them.
    assert rows(out)[: len(base)] == [(p, r, i, a or p in expected, snd) for p, r, i, a, snd in rows(base)]
    budget_pick = base.loc[base["route_reason"] != "audit", "pair_id"].iloc[0]
    added = [
        (r.pair_id, r.route_reason, r.audit, r.send)
        for r in out.itertuples()
        if r.route_reason == "gate_audit"
    ]
    assert added == [(p, "gate_audit", True, p != expected[0]) for p in expected if p != budget_pick]
    assert set(out.loc[out["audit"], "pair_id"]) == audit | set(expected)
    # Abstained pairs are eligible: the gate tests the judge's lean on every pair.
    assert route_edge_cases(prefs, pairs, s, extra_audit=8)["audit"].sum() == 8
