"""Pair formation and import (HH-RLHF and plain formats), with known labels kept apart."""

import gzip
import json
from collections import Counter
from pathlib import Path

from alignment_dagster.data.pairs import form_pairs, import_pairs, pair_id_for, split_hh_transcript
from tests.conftest import SHARED_DATA


def _read(p: str) -> bytes:
    return Path(p).read_bytes()


def test_form_pairs_drops_degenerate_and_caps() -> None:
    dropped: Counter = Counter()
    rows = form_pairs(
        "p1",
        "Hi?",
        ["Hello!", " Hello!  ", "", "Hey there"],
        category="helpful",
        policy_model="m",
        dropped=dropped,
    )
    assert [(r["response_a"], r["response_b"]) for r in rows] == [
        ("Hello!", "Hey there"),
        (" Hello!  ", "Hey there"),
    ]
    assert dropped == Counter({"empty_response": 3, "identical_responses": 1})
    assert rows[0]["pair_id"] == pair_id_for("Hi?", "Hello!", "Hey there")
    assert (
        len(form_pairs("p1", "Hi?", ["a", "b", "c", "d"], category=None, policy_model="m", max_pairs=2)) == 2
    )


def test_split_hh_transcript() -> None:
    conv, reply = split_hh_transcript(
        "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: like this"
    )
    assert conv == "Human: hi\n\nAssistant: hello\n\nHuman: how?"
    assert reply == "like this"


def test_import_hh_keeps_labels_apart_and_balances_order() -> None:
    ps = import_pairs([str(SHARED_DATA)], _read)
    assert len(ps.pairs) == 1152 and len(ps.labels) == 1152
    assert "label" not in ps.pairs.columns and "chosen" not in " ".join(ps.pairs.columns)
    share_a = (ps.labels["label"] == "A").mean()
    assert 0.45 < share_a < 0.55  # the preferred reply is not always shown first
    assert ps.dropped == Counter({"empty_response": 2})
    assert [(b.row, b.field) for b in ps.bad_rows] == [(643, "rejected"), (868, "rejected")]
    assert set(ps.pairs["origin"]) == {"imported"} and set(ps.pairs["category"]) == {"red-team"}
    # Labels point at the human-preferred reply.
    first = json.loads(__import__("gzip").open(SHARED_DATA, "rt").readline())
    _, chosen = split_hh_transcript(first["chosen"])
    row = ps.pairs.iloc[0]
    label = ps.labels.set_index("pair_id").loc[row["pair_id"], "label"]
    assert (row["response_a"] if label == "A" else row["response_b"]) == chosen


def test_import_plain_formats_report_bad_rows(tmp_path: Path) -> None:
    f = tmp_path / "pairs.jsonl"
    f.write_text(
        "\n".join(
            [
                json.dumps({"prompt": "q1", "response_a": "x", "response_b": "y", "label": "b"}),
                json.dumps({"prompt": "q2", "response_a": "x"}),
                json.dumps({"prompt": "q3", "response_a": "x", "response_b": "y", "label": "C"}),
                json.dumps({"prompt": "q4", "response_a": "same", "response_b": "same"}),
                json.dumps({"prompt": "q1", "response_a": "x", "response_b": "y"}),
                json.dumps({"prompt": "q5", "response_a": "u", "response_b": "v", "category": "helpful"}),
                json.dumps({"prompt": "q6", "response_a": "u", "response_b": "v", "category": "Red Team"}),
                json.dumps({"prompt": "q7", "response_a": "u", "response_b": "v", "category": 5}),
                json.dumps({"prompt": "q8", "response_a": "u", "response_b": "v", "category": "!!"}),
                json.dumps({"prompt": "q9", "response_a": "u", "response_b": "v", "category": " "}),
            ]
        )
        + "\n"
    )
    ps = import_pairs([str(f)], _read)
    assert ps.pairs["prompt"].tolist() == ["q1", "q5", "q6", "q9"]
    assert ps.pairs["category"].tolist() == ["red-team", "helpful", "red-team", "red-team"]
    assert ps.labels[["label", "source_dataset"]].values.tolist() == [["B", "pairs.jsonl"]]
    assert [str(b) for b in ps.bad_rows] == [
        f"{f}: row 2: response_b: missing",
        f"{f}: row 3: label: 'C' is not one of A, B, tie",
        f"{f}: row 8: category: expected a string, got int",
        f"{f}: row 9: category: '!!' has no letters or digits",
    ]
    assert ps.dropped == Counter({"identical_responses": 1, "duplicate": 1})


def test_empty_label_means_unlabelled_and_a_truncated_file_keeps_its_rows(tmp_path: Path) -> None:
    form = tmp_path / "pairs.csv"
    form.write_text("prompt,response_a,response_b,label\nq1,x,y,\nq2,x,y,  \nq3,x,y,b\n")
    hh = tmp_path / "hh.jsonl.gz"
    rows = [
        {"chosen": f"\n\nHuman: q{i}\n\nAssistant: yes", "rejected": f"\n\nHuman: q{i}\n\nAssistant: no"}
        for i in range(4)
    ]
    hh.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())[:-10])  # cut in row 4
    plain = tmp_path / "pairs.jsonl"
    plain.write_text(json.dumps({"prompt": "q9", "response_a": "u", "response_b": "v", "label": ""}) + "\n")

    ps = import_pairs([str(form), str(hh), str(plain)], _read)
    assert ps.pairs["prompt"].tolist() == ["q1", "q2", "q3", "Human: q0", "Human: q1", "Human: q2", "q9"]
    assert ps.labels["source_dataset"].tolist() == ["pairs.csv", "hh.jsonl.gz", "hh.jsonl.gz", "hh.jsonl.gz"]
    assert ps.labels["label"].iloc[0] == "B"
    assert [str(b) for b in ps.bad_rows] == [f"{hh}: truncated after row 3"]
