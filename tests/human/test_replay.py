"""Replay labeller end to end on real HH-RLHF pairs: route -> replay -> aggregate -> calibrate."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from alignment_dagster.core.keys import sha256_hex
from alignment_dagster.data.pairs import PAIR_COLUMNS, import_pairs, pair_id_for
from alignment_dagster.human.agreement import aggregate_labels
from alignment_dagster.human.calibration import judge_human_agreement
from alignment_dagster.human.replay import ReplayLabeller
from alignment_dagster.human.routing import route_edge_cases
from alignment_dagster.specs.constitution import RoutingSettings
from tests.conftest import SHARED_DATA

N_PAIRS = 200
SOURCE = "hh-rlhf-harmless-dev.jsonl.gz"
T0 = "2025-04-01T00:00:00+00:00"


def _h(pid: str, salt: str) -> int:
    return int(sha256_hex(f"{salt}:{pid}")[:8], 16)


@pytest.fixture(scope="module")
def hh() -> tuple[pd.DataFrame, pd.DataFrame]:
    """200 real HH pairs (known labels apart) plus 3 sampled pairs nobody has labelled."""
    ps = import_pairs([str(SHARED_DATA)], lambda uri: Path(uri).read_bytes(), limit=N_PAIRS)
    sampled = pd.DataFrame(
        [
            {
                "pair_id": pair_id_for(f"Human: q{i}", f"a{i}", f"b{i}"),
                "prompt_id": f"s{i}",
                "prompt": f"Human: q{i}",
                "response_a": f"a{i}",
                "response_b": f"b{i}",
                "origin": "sampled",
                "policy_model": "smollm2",
                "category": "red-team",
            }
            for i in range(3)
        ],
        columns=PAIR_COLUMNS,
    )
    return pd.concat([ps.pairs, sampled], ignore_index=True), ps.labels


def synthetic_judge(pairs: pd.DataFrame, known: pd.DataFrame) -> pd.DataFrame:
    """A stand-in judge, fixed by hashes: abstains on 1 pair in 8, otherwise right 4 times in 5."""
    truth = dict(zip(known["pair_id"], known["label"], strict=True))
    rows = []
    for pid in pairs["pair_id"]:
        conf = (_h(pid, "conf") % 100) / 100
        if _h(pid, "abstain") % 8 == 0:
            label, reason = "abstain", "vote_split"
        else:
            right = truth.get(pid, "A")
            label, reason = (right if _h(pid, "right") % 5 else ("B" if right == "A" else "A")), None
        p_a = 0.5 + conf / 2 if label == "A" else 0.5 - conf / 2
        rows.append(
            {
                "pair_id": pid,
                "label": label,
                "p_a": p_a,
                "p_chosen": max(p_a, 1 - p_a),
                "confidence": conf,
                "vote_share": 1.0,
                "abstain_reason": reason,
                "n_consistent": 3,
                "n_principles": 3,
            }
        )
    return pd.DataFrame(rows)


def test_pairs_are_real_hh_rows_split_at_the_last_assistant_turn(hh):
    pairs, known = hh
    with gzip.open(SHARED_DATA, "rt") as f:
        first = json.loads(f.readline())
    cut = first["chosen"].rfind("\n\nAssistant:")
    prompt, chosen = first["chosen"][:cut].strip(), first["chosen"][cut + len("\n\nAssistant:") :].strip()
    row = pairs.iloc[0]
    assert row["prompt"] == prompt and row["origin"] == "imported"
    label = known.set_index("pair_id").loc[row["pair_id"], "label"]
    assert (row["response_a"] if label == "A" else row["response_b"]) == chosen
    counts = known["label"].value_counts().to_dict()
    assert len(known) == N_PAIRS and set(counts) == {"A", "B"} and min(counts.values()) > 60  # not all "A"


def test_replay_answers_known_pairs_and_leaves_the_rest_pending(hh):
    pairs, known = hh
    prefs = synthetic_judge(pairs, known)
    sampled_ids = set(pairs.loc[pairs["origin"] == "sampled", "pair_id"])
    # Sampled pairs are always_human by category, so the budget certainly routes them.
    pairs = pairs.assign(
        category=pairs["category"].where(~pairs["pair_id"].isin(sampled_ids), "sampled-red-team")
    )
    settings = RoutingSettings(human_budget=30, audit_fraction=0.1, always_human=["sampled-red-team"])
    edges = route_edge_cases(prefs, pairs, settings)
    n_labelled_by_judge = int((prefs["label"] != "abstain").sum())
    n_audit = -(-n_labelled_by_judge // 10)
    assert int(edges["audit"].sum()) == n_audit
    assert list(edges["route_reason"][:3]) == ["always_human"] * 3

    replay = ReplayLabeller(known)
    result = replay.label(edges, labelled_at=T0)
    routed = list(edges["pair_id"])
    assert result.pending == [p for p in routed if p in sampled_ids] and len(result.pending) == 3
    assert list(result.labels["pair_id"]) == [p for p in routed if p not in sampled_ids]
    truth = dict(zip(known["pair_id"], known["label"], strict=True))
    assert list(result.labels["choice"]) == [truth[p] for p in result.labels["pair_id"]]
    assert set(result.labels["annotator"]) == {f"replay:{SOURCE}"}
    assert set(result.labels["backend"]) == {"replay"} and set(result.labels["labelled_at"]) == {T0}

    agg = aggregate_labels(result.labels)
    assert set(agg["n_annotators"]) == {1} and set(agg["agreement"]) == {1.0}

    # Calibration on the audit slice matches what the stand-in judge was built to do.
    audit = list(edges.loc[edges["audit"], "pair_id"])
    report = judge_human_agreement(prefs, result.labels, audit)
    expected_right = sum(1 for p in audit if _h(p, "right") % 5)
    assert (report.n_pairs, report.n_compared, report.n_human_tie) == (n_audit, n_audit, 0)
    assert report.agreement == expected_right / n_audit
    assert sum(report.table["n"]) == n_audit


def test_a_new_constitution_version_reuses_replayed_labels(hh):
    pairs, known = hh
    prefs = synthetic_judge(pairs, known)
    settings = RoutingSettings(human_budget=30, audit_fraction=0.1)
    first = ReplayLabeller(known).label(route_edge_cases(prefs, pairs, settings), labelled_at=T0)
    again = route_edge_cases(prefs, pairs, settings, already_labelled=set(first.labels["pair_id"]))
    assert not set(again.loc[again["send"], "pair_id"]) & set(first.labels["pair_id"])
    assert int(again["send"].sum()) == 30  # the budget goes to 30 further pairs
    reused = again.loc[~again["send"], "pair_id"]
    assert (
        len(reused)
        and set(reused) <= set(first.labels["pair_id"])
        and again.loc[~again["send"], "audit"].all()
    )
    second = ReplayLabeller(known).label(again, labelled_at=T0)
    assert not set(second.labels["pair_id"]) & set(reused)


def test_bad_known_labels_are_refused():
    ok = {"pair_id": ["p1"], "label": ["A"], "source_dataset": ["x"]}
    assert repr(ReplayLabeller(pd.DataFrame(ok))) == "ReplayLabeller(1 known labels)"
    with pytest.raises(ValueError, match="label 'C' is not one of A, B, tie"):
        ReplayLabeller(pd.DataFrame({**ok, "label": ["C"]}))
    with pytest.raises(ValueError, match=r"lack column\(s\) \['source_dataset'\]"):
        ReplayLabeller(pd.DataFrame(ok).drop(columns="source_dataset"))
    with pytest.raises(ValueError, match="pair_id 'p1' twice"):
        ReplayLabeller(pd.DataFrame({k: v * 2 for k, v in ok.items()}))
