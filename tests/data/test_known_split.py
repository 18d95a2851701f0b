"""The imported human labels' split: by prompt, once; the judge sees only held-out pairs, and no blend ever
trains on them. On the real HH-RLHF file."""

from pathlib import Path

import pandas as pd
import pytest

from alignment_dagster.data.blending import blend_preferences, known_rows
from alignment_dagster.data.pair_pool import KnownSplit, split_imported
from alignment_dagster.data.pairs import HELDOUT, TRAIN, import_pairs, known_split
from alignment_dagster.judge.gate import gate_comparisons
from alignment_dagster.specs.blend import parse_blend
from tests.conftest import REPO, SHARED_DATA


@pytest.fixture(scope="module")
def hh() -> tuple[pd.DataFrame, pd.DataFrame]:
    imported = import_pairs([str(SHARED_DATA)], lambda uri: Path(uri).read_bytes(), limit=300)
    return imported.pairs, imported.labels


def test_split_is_by_prompt_stable_and_about_the_fraction(hh) -> None:
    pairs, labels = hh
    to_judge, known = split_imported(pairs, labels, KnownSplit(heldout_fraction=0.3, judge_heldout=None))
    assert len(known) == len(labels) and set(known["split"]) == {HELDOUT, TRAIN}
    assert known.groupby("prompt_id")["split"].nunique().max() == 1  # one prompt, one side
    share = (known["split"] == HELDOUT).mean()
    assert 0.2 < share < 0.4, share
    assert known_split("some-prompt", 0.3) == known_split("some-prompt", 0.3)
    # Only held-out pairs are judged; the training part never is.
    heldout = set(known.loc[known["split"] == HELDOUT, "pair_id"])
    assert set(to_judge["pair_id"]) == heldout


def test_judge_sees_only_the_first_held_out_pairs(hh) -> None:
    pairs, labels = hh
    small, known = split_imported(pairs, labels, KnownSplit(judge_heldout=10))
    again, _ = split_imported(pairs.sample(frac=1.0, random_state=1), labels, KnownSplit(judge_heldout=10))
    assert len(small) == 10 and set(small["pair_id"]) == set(again["pair_id"])  # not the file's order
    assert set(small["pair_id"]) <= set(known.loc[known["split"] == HELDOUT, "pair_id"])


def test_no_blend_trains_on_held_out_pairs_whoever_labels_them(hh) -> None:
    pairs, labels = hh
    to_judge, known = split_imported(pairs, labels, KnownSplit())
    heldout = set(known.loc[known["split"] == HELDOUT, "pair_id"])
    # An AI label and a human label on every judged (held-out) pair: still no row from them.
    ai = pd.DataFrame({"pair_id": to_judge["pair_id"], "label": "A", "confidence": 1.0})
    human = pd.DataFrame({"pair_id": to_judge["pair_id"], "choice": "A"})
    for path in sorted((REPO / "blends").glob("*.yaml")):
        blend = parse_blend(path.read_bytes(), path.name)
        result = blend_preferences(to_judge, ai, human, blend, known=known)
        assert not set(result.dataset["pair_id"]) & heldout, path.name
        assert result.dropped["heldout"] == len(to_judge)
        expected = len(known_rows(known, TRAIN)) if blend.known_weight > 0 else 0
        assert result.counts.get("known", 0) == expected, path.name
    baseline = parse_blend((REPO / "blends" / "hh-baseline.yaml").read_bytes(), "hh-baseline.yaml")
    rows = blend_preferences(to_judge, ai, human, baseline, known=known).dataset
    assert len(rows) > 100 and set(rows["source"]) == {"known"}
    assert rows["weight"].eq(baseline.known_weight).all()


def test_gate_and_held_out_scoring_use_only_the_held_out_part(hh) -> None:
    pairs, labels = hh
    _, known = split_imported(pairs, labels, KnownSplit())
    everything = pd.DataFrame({"pair_id": known["pair_id"], "p_a": 0.9})
    got = gate_comparisons(everything, pd.DataFrame(columns=["pair_id", "choice", "annotator"]), [], known)
    ab = known[known["label"].isin(["A", "B"])]
    assert set(got["pair_id"]) == set(ab.loc[ab["split"] == HELDOUT, "pair_id"])
    scored = known_rows(known, HELDOUT)
    assert {r["pair_id"] for r in scored} == set(got["pair_id"])


def test_gate_leaves_out_pairs_the_preference_model_trained_on(hh) -> None:
    pairs, labels = hh
    _, known = split_imported(pairs, labels, KnownSplit())
    heldout = known[(known["split"] == HELDOUT) & known["label"].isin(["A", "B"])].head(6)
    prefs = pd.DataFrame(
        {
            "pair_id": heldout["pair_id"],
            "p_a": 0.5,
            "abstain_reason": ["trained_on"] * 3 + ["order_disagreement"] * 3,
        }
    )
    got = gate_comparisons(prefs, pd.DataFrame(columns=["pair_id", "choice", "annotator"]), [], known)
    # Three left out (memory, not signal); three counted, each a miss (p_a 0.5 leans nowhere).
    assert got["pair_id"].tolist() == heldout["pair_id"].tolist()[3:]
    assert not got["agree"].any()
