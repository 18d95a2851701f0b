"""File queue: batches out, label files in, every kind of bad row rejected by number; local and S3 (moto)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import boto3
import pandas as pd
import pytest

from alignment_dagster.core.storage import LocalStorage, S3Storage
from alignment_dagster.data.records import BadRow
from alignment_dagster.human.file_queue import FileQueue

PRINCIPLES = ["Prefer the reply that avoids harm.", "Prefer the honest reply."]
T0 = "2025-03-01T12:00:00+00:00"


def tasks() -> pd.DataFrame:
    """Edge cases joined with their pairs; p4 is an audit pair whose earlier label is reused (send False)."""
    return pd.DataFrame(
        [
            {
                "pair_id": "p2",
                "route_reason": "abstain:vote_split",
                "priority": 1,
                "category": "red-team",
                "prompt": "Human: hi",
                "response_a": 'Hello, "friend"',
                "response_b": "Go away",
                "send": True,
            },
            {
                "pair_id": "p1",
                "route_reason": "always_human",
                "priority": 0,
                "category": "medical",
                "prompt": "Human: dose?\n\nAssistant: which drug?\n\nHuman: aspirin",
                "response_a": "Ask a doctor,\nplease",
                "response_b": "Take ten",
                "send": True,
            },
            {
                "pair_id": "p3",
                "route_reason": "audit",
                "priority": 2,
                "category": None,
                "prompt": "Human: tell me a joke",
                "response_a": "No.",
                "response_b": "Knock knock, é",
                "send": True,
            },
            {
                "pair_id": "p4",
                "route_reason": "audit",
                "priority": 3,
                "category": None,
                "prompt": "Human: x",
                "response_a": "y",
                "response_b": "z",
                "send": False,
            },
        ]
    )


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "local":
        return LocalStorage(tmp_path / "root")
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    return S3Storage(
        bucket, "pipeline", lambda: boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    )


@pytest.fixture
def queue(tmp_path: Path) -> FileQueue:
    q = FileQueue(LocalStorage(tmp_path / "root"), "human_labels/cai-0123abcd/file_queue")
    q.write_batch(tasks(), PRINCIPLES)
    return q


def errors(result) -> list[str]:
    return [str(e) for e in result.errors]


def rows(df: pd.DataFrame) -> list[tuple]:
    """Rows as tuples, missing values as None (pandas 3 stores a missing string as NaN)."""
    return [tuple(None if pd.isna(v) else v for v in r) for r in df.itertuples(index=False)]


def test_write_batch_files(tmp_path: Path):
    q = FileQueue(LocalStorage(tmp_path / "root"), "hl/file_queue")
    batch = q.write_batch(tasks(), PRINCIPLES)
    assert batch == q.write_batch(tasks(), PRINCIPLES)  # same content: same id, files rewritten in place
    assert batch.n_tasks == 3 and batch.batch_id.startswith("batch-") and q.batch_ids() == [batch.batch_id]
    root = tmp_path / "root" / "hl" / "file_queue" / "batches" / batch.batch_id
    assert sorted(p.name for p in root.iterdir()) == ["GUIDANCE.md", "tasks.csv", "tasks.jsonl"]
    lines = [json.loads(x) for x in (root / "tasks.jsonl").read_text().splitlines()]
    assert [x["pair_id"] for x in lines] == ["p1", "p2", "p3"]  # by priority; p4 (send False) left out
    assert lines[0] == {
        "pair_id": "p1",
        "priority": 0,
        "route_reason": "always_human",
        "category": "medical",
        "prompt": "Human: dose?\n\nAssistant: which drug?\n\nHuman: aspirin",
        "response_a": "Ask a doctor,\nplease",
        "response_b": "Take ten",
    }
    assert lines[2]["category"] is None and lines[2]["response_b"] == "Knock knock, é"
    form = list(csv.DictReader(io.StringIO((root / "tasks.csv").read_text())))
    assert list(form[0]) == [
        "pair_id",
        "priority",
        "route_reason",
        "category",
        "prompt",
        "response_a",
        "response_b",
        "choice",
        "annotator",
        "comment",
    ]
    assert form[1]["response_a"] == 'Hello, "friend"' and form[0]["choice"] == ""
    guidance = (root / "GUIDANCE.md").read_text()
    assert "1. Prefer the reply that avoids harm.\n2. Prefer the honest reply." in guidance
    assert list(q.tasks()["pair_id"]) == ["p1", "p2", "p3"]
    with pytest.raises(ValueError, match=r"lack column\(s\) \['response_b'\]"):
        q.write_batch(tasks().drop(columns="response_b"), PRINCIPLES)


def test_csv_bad_rows_rejected_by_row_number_good_rows_kept(queue: FileQueue):
    raw = (
        b"pair_id,choice,annotator,comment\n"
        b"p1,A,ann,good\n"  # 1 ok
        b"p2,C,ann,\n"  # 2 bad choice
        b"zz,A,ann,\n"  # 3 unknown pair
        b",B,ann,\n"  # 4 missing pair_id
        b"p1, a ,ann,again\n"  # 5 duplicate of row 1 (same choice, any case)
        b"p3,A,bob,\n"  # 6 conflict with 7
        b"p3,b,bob,\n"  # 7 conflict with 6
        b"p2,,ann,\n"  # 8 not labelled yet: no error
        b"p2,TIE,,\n"  # 9 ok, anonymous
        b"p3,B,ann,x,extra\n"  # 10 too many cells
        b'p3,B,ann,"multi\nline"\n'  # 11 ok: quoted newline stays in one row
    )
    r = queue.import_labels(raw, "labels.csv", labelled_at=T0)
    assert errors(r) == [
        "labels.csv: row 2: choice: 'C' is not one of A, B, tie",
        "labels.csv: row 3: pair_id: 'zz' is not in any batch of this queue",
        "labels.csv: row 4: pair_id: missing",
        "labels.csv: row 5: pair_id: duplicate of row 1 (pair 'p1', annotator 'ann')",
        "labels.csv: row 6: choice: 'A' conflicts with row(s) 7 for pair 'p3' by annotator 'bob'",
        "labels.csv: row 7: choice: 'B' conflicts with row(s) 6 for pair 'p3' by annotator 'bob'",
        "labels.csv: row 10: more cells than header columns",
    ]
    assert r.errors[0] == BadRow("labels.csv", 2, "choice", "'C' is not one of A, B, tie")
    assert (r.n_rows, r.n_unlabelled, r.ok) == (11, 1, False)
    assert rows(r.labels) == [
        ("p1", "A", "ann", T0, "file_queue", "good"),
        ("p2", "tie", "anonymous", T0, "file_queue", None),
        ("p3", "B", "ann", T0, "file_queue", "multi\nline"),
    ]
    assert r.summary() == "labels.csv: 3 label(s) accepted, 7 row(s) rejected, 1 unlabelled, 11 row(s) read"


def test_jsonl_bad_rows_use_line_numbers(queue: FileQueue):
    lines = [
        '{"pair_id": "p1", "choice": "b", "annotator": "ann", "labelled_at": "2025-03-02T09:30:00Z"}',  # 1 ok
        "{not json",  # 2
        '["p1", "A"]',  # 3
        "",  # 4 blank: skipped, still counted
        '{"pair_id": "p2", "annotator": "ann"}',  # 5 choice key absent
        '{"pair_id": "p2", "choice": "A", "labelled_at": "yesterday"}',  # 6
        '{"pair_id": "p2", "choice": null}',  # 7 not labelled yet
        '{"pair_id": "p3", "choice": "A", "annotator": "a\\nb"}',  # 8
        '{"pair_id": "p3", "choice": 1}',  # 9
        '{"pair_id": "p3", "choice": "tie", "annotator": "cat", "comment": "both fine"}',  # 10 ok
    ]
    r = queue.import_labels("\n".join(lines).encode(), "batch/labels.jsonl", labelled_at=T0)
    assert errors(r) == [
        "labels.jsonl: row 2: invalid JSON (Expecting property name enclosed in double quotes at column 2)",
        "labels.jsonl: row 3: expected a JSON object, got list",
        "labels.jsonl: row 5: choice: missing",
        "labels.jsonl: row 6: labelled_at: 'yesterday' is not an ISO-8601 time",
        "labels.jsonl: row 8: annotator: must be one line of at most 200 characters",
        "labels.jsonl: row 9: choice: '1' is not one of A, B, tie",
    ]
    assert rows(r.labels) == [
        ("p1", "B", "ann", "2025-03-02T09:30:00+00:00", "file_queue", None),
        ("p3", "tie", "cat", T0, "file_queue", "both fine"),
    ]
    assert (r.n_rows, r.n_unlabelled) == (9, 1)


def test_whole_file_problems(queue: FileQueue):
    r = queue.import_labels(b"pair_id,answer\np1,A\n", "x.csv")
    assert errors(r) == ["x.csv: missing column(s) choice (header: pair_id, answer)"] and r.labels.empty
    assert errors(queue.import_labels(b"\xff\xfe", "x.csv")) == ["x.csv: header is not UTF-8 text"]
    assert errors(queue.import_labels(b"{}", "x.xlsx")) == [
        "x.xlsx: unknown file format (use .jsonl, .csv or .parquet, optionally .gz)"
    ]
    assert errors(queue.import_labels(b"", "empty.csv")) == [
        "empty.csv: missing column(s) pair_id, choice (header: empty)"
    ]
    # A spreadsheet's byte-order mark does not hide the first column name.
    assert queue.import_labels("\ufeffpair_id,choice\np1,A\n".encode(), "bom.csv", store=False).ok


def test_line_separators_round_trip_and_a_bad_byte_costs_one_row(tmp_path: Path):
    # U+2028, U+2029 and U+0085 are legal in JSON strings; json.dumps(ensure_ascii=False) writes them raw.
    odd = "para one\u2028para two\u2029three\x85four"
    q = FileQueue(LocalStorage(tmp_path / "root"), "hl/file_queue")
    batch = tasks()
    batch.loc[batch["pair_id"] == "p2", "response_b"] = odd
    q.write_batch(batch, PRINCIPLES)
    assert q.tasks().set_index("pair_id").loc["p2", "response_b"] == odd

    form = (
        f"pair_id,choice,annotator,comment\np1,A,ann,{odd}\n".encode()
        + b"p2,B,Jos\xe9,tr\xe8s bien\n"  # cp1252, as Excel saves it
        + f"p3,tie,ann,{'long ' * 30_000}\n".encode()
    )  # over csv's 128 KiB field limit
    r = q.import_labels(form, "form.csv", labelled_at=T0)
    assert errors(r) == ["form.csv: row 2: not UTF-8 text in column 'annotator'"]
    assert [(x.pair_id, len(x.comment)) for x in r.labels.itertuples()] == [("p1", len(odd)), ("p3", 149_999)]
    assert q.labels().set_index("pair_id").loc["p1", "comment"] == odd  # stored, then read back whole

    first = json.dumps({"pair_id": "p2", "choice": "A", "comment": odd}, ensure_ascii=False)
    jsonl = first.encode() + b'\r\n{"pair_id": "p3", "choice": "B", "comment": "tr\xe8s"}\n'
    r = q.import_labels(jsonl, "mixed.jsonl", labelled_at=T0, store=False)
    assert errors(r) == ["mixed.jsonl: row 2: not UTF-8 text"]
    assert rows(r.labels) == [("p2", "A", "anonymous", T0, "file_queue", odd)]


def test_round_trip_fill_in_the_batch_form(storage):
    q = FileQueue(storage, "human_labels/cai-0123abcd/file_queue")
    batch = q.write_batch(tasks(), PRINCIPLES)
    assert list(q.pending()["pair_id"]) == ["p1", "p2", "p3"]

    # An annotator fills in the CSV form from storage, leaving p3 for later, and imports it back as it is.
    form = list(csv.DictReader(io.StringIO(storage.read_bytes(batch.keys["csv"]).decode())))
    form[0].update(choice="a", annotator="ann", comment="safer")
    form[1].update(choice="B", annotator="ann")
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=list(form[0]))
    w.writeheader()
    w.writerows(form)
    raw = out.getvalue().encode()
    r = q.import_labels(raw, "ann-labels.csv", labelled_at=T0)
    assert r.ok and (r.n_rows, r.n_unlabelled) == (3, 1)
    assert r.stored_key is not None and r.stored_key.startswith(
        "human_labels/cai-0123abcd/file_queue/labels/ann-labels.csv-"
    )
    assert storage.exists(r.stored_key)
    assert rows(q.labels()) == [
        ("p1", "A", "ann", T0, "file_queue", "safer"),
        ("p2", "B", "ann", T0, "file_queue", None),
    ]
    assert list(q.pending()["pair_id"]) == ["p3"]

    # Importing the same bytes again changes nothing; a later file from the same annotator supersedes.
    assert q.import_labels(raw, "ann-labels.csv", labelled_at=T0).stored_key == r.stored_key
    later = q.import_labels(
        b'{"pair_id": "p2", "choice": "tie", "annotator": "ann"}\n'
        b'{"pair_id": "p3", "choice": "A", "annotator": "bob"}\n',
        "fix.jsonl",
        labelled_at="2025-03-05T00:00:00Z",
    )
    assert later.ok and len(storage.list("human_labels/cai-0123abcd/file_queue/labels")) == 2
    assert [(x.pair_id, x.choice, x.annotator) for x in q.labels().itertuples()] == [
        ("p1", "A", "ann"),
        ("p2", "tie", "ann"),
        ("p3", "A", "bob"),
    ]
    assert len(q.labels(latest=False)) == 4
    assert q.pending().empty
