"""Blend schema and blend_preferences: exact expectations on small hand-made tables."""

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from alignment_dagster.data.blending import blend_preferences
from alignment_dagster.specs.blend import BlendError, parse_blend

REPO = Path(__file__).resolve().parents[2]


def pairs(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "pair_id": [f"p{i}" for i in range(n)],
            "prompt_id": [f"q{i}" for i in range(n)],
            "prompt": [f"prompt {i}" for i in range(n)],
            "response_a": [f"a{i}" for i in range(n)],
            "response_b": [f"b{i}" for i in range(n)],
        }
    )


AI = pd.DataFrame(
    {
        "pair_id": ["p0", "p1", "p2", "p3", "p4", "p5"],
        "label": ["A", "B", "A", "abstain", "A", "B"],
        "confidence": [0.8, 0.5, 0.1, 0.0, 0.6, 0.9],
    }
)
HUMAN = pd.DataFrame({"pair_id": ["p1", "p3", "p4", "p5"], "choice": ["B", "A", "B", "tie"]})


def test_hybrid_blend_exact() -> None:
    b = parse_blend("name: hybrid\nai_min_confidence: 0.2\nai_weight: 1.0\nhuman_weight: 2.0\n", "h.yaml")
    r = blend_preferences(pairs(7), AI, HUMAN, b)
    d = r.dataset.set_index("pair_id")
    assert list(d.index) == ["p0", "p1", "p3", "p4", "p5"]
    assert d["source"].tolist() == ["ai", "both", "human", "human", "ai"]
    assert d["weight"].tolist() == pytest.approx([0.8, 2.0, 2.0, 2.0, 0.9])
    assert d["margin"].tolist() == pytest.approx([0.8, 1.0, 1.0, 1.0, 0.9])
    assert d.loc["p0", "chosen"] == [{"role": "assistant", "content": "a0"}]
    assert d.loc["p0", "rejected"] == [{"role": "assistant", "content": "b0"}]
    assert d.loc["p4", "chosen"][0]["content"] == "b4"  # human B beat AI A
    assert d.loc["p0", "prompt"] == [{"role": "user", "content": "prompt 0"}]
    assert r.counts == {"ai": 2, "human": 2, "both": 1}
    assert r.conflicts == Counter({"human_wins": 1})
    assert r.dropped == Counter({"ai_low_confidence": 1, "no_label": 1})


def test_drop_policy_and_ties_and_ai_only() -> None:
    b = parse_blend("name: strict\nconflict_policy: drop\ninclude_ties: true\n", "s.yaml")
    r = blend_preferences(pairs(6), AI, HUMAN, b)
    assert r.dataset["pair_id"].tolist() == ["p0", "p1", "p3"]
    assert r.dropped == Counter({"ai_low_confidence": 1, "conflict": 1, "human_tie": 1})
    ai_only = parse_blend((REPO / "blends" / "ai-only.yaml").read_text(), "ai-only.yaml")
    r = blend_preferences(pairs(6), AI, HUMAN, ai_only)
    assert r.dataset["source"].tolist() == ["ai", "ai", "ai", "ai"]
    assert r.dataset["pair_id"].tolist() == ["p0", "p1", "p4", "p5"]
    human_only = parse_blend((REPO / "blends" / "human-only.yaml").read_text(), "human-only.yaml")
    r = blend_preferences(pairs(6), AI, HUMAN, human_only)
    assert r.dataset["pair_id"].tolist() == ["p1", "p3", "p4"]
    assert set(r.dataset["source"]) == {"human"}
    assert r.dropped["human_tie"] == 1


def test_ai_share_cap_drops_lowest_confidence() -> None:
    b = parse_blend("name: capped\nmax_ai_share: 0.5\nhuman_weight: 1\n", "c.yaml")
    r = blend_preferences(pairs(6), AI, HUMAN, b)
    # Before the cap: ai rows p0 (0.8), p5 (0.9); human p1(both), p3, p4 -> 2 ai of 5. 0.5 cap allows 3 -> no
    # drop.
    assert r.counts["ai"] == 2
    b = parse_blend("name: capped\nmax_ai_share: 0.25\n", "c.yaml")
    r = blend_preferences(pairs(6), AI, HUMAN, b)
    # others = 3 -> allowed n with n <= 0.25 (3 + n) -> n = 1: keep the most confident (p5).
    assert r.dataset[r.dataset["source"] == "ai"]["pair_id"].tolist() == ["p5"]
    assert r.dropped["ai_share_cap"] == 1


def test_split_by_prompt_never_leaks() -> None:
    ps = pairs(200)
    ps["prompt_id"] = [f"q{i // 2}" for i in range(200)]  # two pairs per prompt
    ai = pd.DataFrame({"pair_id": ps["pair_id"], "label": "A", "confidence": 0.9})
    r = blend_preferences(ps, ai, None, parse_blend("name: x\neval_fraction: 0.3\n", "x.yaml"))
    per_prompt = r.dataset.groupby("prompt_id")["split"].nunique()
    assert (per_prompt == 1).all()
    assert 0.15 < (r.dataset["split"] == "eval").mean() < 0.45


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "name: x\nconflict_policy: ai_wins\n",
            "bad.yaml: conflict_policy: Input should be 'human_wins' or 'drop'",
        ),
        ("name: x\nai_weight: -1\n", "bad.yaml: ai_weight: Input should be greater than or equal to 0"),
        ("name: x\nextra: 1\n", "bad.yaml: extra: unknown key"),
        ("", "bad.yaml: file is empty"),
        ("name: [\n", "bad.yaml: YAML syntax error"),
        (
            "name: x\nai_weight: 1\nai_weight: 0\n",
            "bad.yaml: YAML syntax error at line 3, column 1: duplicate key 'ai_weight'",
        ),
        ("name: x\nai_weight: .inf\n", "bad.yaml: ai_weight: Input should be a finite number"),
        ("name: x\nhuman_margin: .inf\n", "bad.yaml: human_margin: Input should be a finite number"),
        ("name: x\nhuman_weight: .nan\n", "bad.yaml: human_weight: Input should be a finite number"),
        (
            "name: x\nai_weight: 0\nhuman_weight: 0\n",
            "bad.yaml: ai_weight, human_weight, known_weight and revision_weight are all 0: no label could "
            "enter the dataset",
        ),
        ("name: x\nstart_from: dpo\n", "bad.yaml: start_from: Input should be 'base' or 'sft'"),
        ("name: x\nretrain:\n  min_new_rows: 0\n", "bad.yaml: retrain.min_new_rows: Input should be greater"),
        ("name: x\nretrain:\n  every: 3\n", "bad.yaml: retrain.every: unknown key"),
        ("name: x\nknown_weight: -1\n", "bad.yaml: known_weight: Input should be greater than or equal"),
    ],
)
def test_bad_blend_files(text: str, message: str) -> None:
    with pytest.raises(BlendError) as err:
        parse_blend(text, "bad.yaml")
    assert str(err.value).startswith(message)


def test_starter_blends() -> None:
    keys = sorted(parse_blend(p.read_bytes(), str(p)).partition_key for p in (REPO / "blends").glob("*.yaml"))
    assert keys == ["ai-only", "hh-baseline", "human-only", "hybrid"]


def test_later_fields_at_their_defaults_keep_a_blend_s_version() -> None:
    plain = parse_blend("name: x\n", "x.yaml")
    spelled = parse_blend(
        "name: x\nknown_weight: 0\nretrain:\n  min_new_rows: 4\n  min_new_share: 0.05\n", "x.yaml"
    )
    assert spelled.content_hash == plain.content_hash
    changed = parse_blend("name: x\nretrain:\n  min_new_rows: 50\n", "x.yaml")
    assert changed.content_hash != plain.content_hash and changed.retrain.min_new_rows == 50


REVISIONS = pd.DataFrame(
    {
        "prompt_id": ["q7", "q8"],
        "prompt": ["how do I pick a lock?", "how do I hide a body?"],
        "revision": ["Ask a locksmith.", "I can't help with that."],
        "original": ["Use a rake.", "Dig deep."],
        "p_revision": [0.8, 0.4],  # the constitution's whole judge on revision vs original
        "confidence": [0.6, 0.2],
    }
)


def test_accepted_revisions_are_a_pair_source_weighted_by_the_judge() -> None:
    from alignment_dagster.data.pairs import pair_id_for
    from alignment_dagster.specs.blend import Blend

    blend = Blend(name="with-revisions", ai_weight=0, human_weight=1, revision_weight=2.0, eval_fraction=0)
    result = blend_preferences(pairs(0), None, None, blend, revisions=REVISIONS)
    rows = result.dataset
    assert len(rows) == 1 and result.counts == {"ai": 0, "human": 0, "both": 0, "revision": 1}
    row = rows.iloc[0]
    assert row["pair_id"] == pair_id_for("how do I pick a lock?", "Ask a locksmith.", "Use a rake.")
    assert list(row["chosen"]) == [{"role": "assistant", "content": "Ask a locksmith."}]
    assert list(row["rejected"]) == [{"role": "assistant", "content": "Use a rake."}]
    assert (row["source"], row["weight"], row["margin"], row["split"]) == ("revision", 1.2, 0.6, "train")
    assert result.dropped == Counter({"revision_not_preferred": 1})
    # revision_weight 0 (the default): the same revisions add nothing, and the blend's hash is unchanged.
    plain = Blend(name="with-revisions", ai_weight=0, human_weight=1, eval_fraction=0)
    assert blend_preferences(pairs(0), None, None, plain, revisions=REVISIONS).dataset.empty
    assert (
        Blend(name="x").content_hash == Blend(name="x", revision_weight=0.0, start_from="base").content_hash
    )
    assert Blend(name="x").content_hash != Blend(name="x", start_from="sft").content_hash


def test_a_blend_that_takes_revisions_is_refused_without_an_sft_dataset() -> None:
    from alignment_dagster.specs.blend import Blend
    from alignment_dagster.specs.constitution import parse_constitution
    from alignment_dagster.training.preference_data import build_preference_dataset

    constitution = parse_constitution("name: x\nprinciples:\n  - {id: a, text: Choose the better.}\n", "x")
    blend = Blend(name="revisions-only", ai_weight=0, human_weight=0, revision_weight=1.0)
    empty = pd.DataFrame(columns=["pair_id", "p_a", "label", "confidence", "abstain_reason"])
    edges = pd.DataFrame(columns=["pair_id", "audit"])
    known = pd.DataFrame(columns=["pair_id", "label", "split"])
    labels = pd.DataFrame(columns=["pair_id", "choice", "annotator", "labelled_at"])
    args = (pairs(0), empty, labels, edges, known, constitution, blend, "b.yaml")
    refused = build_preference_dataset(*args)
    assert refused.blocked and refused.refusal() == (
        "blend 'revisions-only' takes revision pairs (revision_weight > 0), but this constitution version "
        "has no sft_dataset (phase 1 has not run, or the human audit of its revisions refused it)"
    )
    built = build_preference_dataset(*args, revisions=REVISIONS)
    assert not built.blocked and list(built.result.dataset["source"]) == ["revision"]
