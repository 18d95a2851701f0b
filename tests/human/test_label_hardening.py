"""Label files that would cost more than their own row: an unclosed CSV quote, a label dated in the future,
one annotator under two spellings, formula cells in the annotators' tasks.csv."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd

from alignment_dagster.core.storage import LocalStorage
from alignment_dagster.human.agreement import aggregate_labels
from alignment_dagster.human.file_queue import FileQueue

T0 = "2025-03-01T12:00:00+00:00"


def queue(tmp_path: Path, prompts: list[str] | None = None) -> FileQueue:
    q = FileQueue(LocalStorage(tmp_path / "root"), "queue/c-1")
    prompts = prompts or ["Human: hi"] * 4
    tasks = pd.DataFrame(
        {
            "pair_id": [f"p{i}" for i in range(1, len(prompts) + 1)],
            "prompt": prompts,
            "response_a": ["a"] * len(prompts),
            "response_b": ["b"] * len(prompts),
        }
    )
    q.write_batch(tasks, ["Prefer the kinder reply."])
    return q


def test_an_unclosed_quote_rejects_its_row_and_keeps_the_labels_after_it(tmp_path: Path) -> None:
    q = queue(tmp_path)
    text = (
        "pair_id,choice,annotator,comment\n"
        "p1,A,ann,fine\n"
        'p2,B,ann,"this quote is never closed\n'
        "p3,tie,ann,ok\n"
        "p4,A,ann,ok\n"
    )
    result = q.import_labels(text.encode(), "labels.csv", labelled_at=T0)
    assert list(result.labels["pair_id"]) == ["p1", "p3", "p4"]
    assert [(e.row, e.message.split(" (")[0]) for e in result.errors] == [(2, "bad quoting")]
    assert result.n_rows == 4


def test_a_label_from_the_future_is_refused_and_later_corrections_count(tmp_path: Path) -> None:
    q = queue(tmp_path)
    first = (
        "pair_id,choice,annotator,labelled_at\np1,A,ann,2999-01-01T00:00:00Z\np2,B,ann,2025-01-01T00:00:00Z\n"
    )
    result = q.import_labels(first.encode(), "first.csv")
    assert [(e.row, e.field) for e in result.errors] == [(1, "labelled_at")]
    assert "is in the future" in result.errors[0].message
    assert list(result.labels["pair_id"]) == ["p2"]
    overflow = "pair_id,choice,annotator,labelled_at\np1,A,ann,9999-12-31T23:59:59-05:00\n"
    assert q.import_labels(overflow.encode(), "o.csv").errors[0].field == "labelled_at"
    q.import_labels(b"pair_id,choice,annotator\np1,B,ann\n", "correction.csv")
    labels = q.labels()
    assert dict(zip(labels["pair_id"], labels["choice"], strict=True)) == {"p1": "B", "p2": "B"}


def test_one_annotator_under_two_spellings_is_one_person(tmp_path: Path) -> None:
    q = queue(tmp_path)
    same_file = "pair_id,choice,annotator\np1,A,Alice\np1,B,alice\np2,A,Bob\np2,A,\uff42\uff4f\uff42\n"
    result = q.import_labels(same_file.encode(), "one.csv", labelled_at=T0)
    assert [(e.row, e.field) for e in result.errors] == [(1, "choice"), (2, "choice"), (4, "pair_id")]
    assert list(result.labels["pair_id"]) == ["p2"]
    q.import_labels(b"pair_id,choice,annotator\np3,A,Carol\n", "a.csv", labelled_at=T0)
    q.import_labels(b"pair_id,choice,annotator\np3,B,CAROL\n", "b.csv", labelled_at="2025-03-02T00:00:00Z")
    votes = aggregate_labels(q.labels()).set_index("pair_id")
    assert votes.loc["p3", "n_annotators"] == 1 and votes.loc["p3", "choice"] == "B"
    hidden = q.import_labels("pair_id,choice,annotator\np4,A,\u200b\n".encode(), "h.csv", labelled_at=T0)
    assert [(e.row, e.field) for e in hidden.errors] == [(1, "annotator")]


def test_tasks_csv_cells_never_start_a_formula(tmp_path: Path) -> None:
    evil = ['=HYPERLINK("http://x.example","click")', "+1+1", "-2+3", "@SUM(A1)", "\t=1", "plain -ok"]
    q = queue(tmp_path, evil)
    batch = q.batch_ids()[0]
    form = (tmp_path / "root" / "queue/c-1/batches" / batch / "tasks.csv").read_text()
    cells = [row["prompt"] for row in csv.DictReader(io.StringIO(form))]
    assert sorted(cells) == sorted(["'" + p for p in evil[:5]] + ["plain -ok"])
    assert all(not c.startswith(("=", "+", "-", "@", "\t")) for c in cells)
    filled = form.replace(",,,\n", ",A,ann,\n", 1)  # the form's empty choice/annotator/comment, filled once
    result = q.import_labels(filled.encode(), "tasks.csv", labelled_at=T0)
    assert result.ok and len(result.labels) == 1 and result.n_unlabelled == len(evil) - 1
    jsonl = (tmp_path / "root" / "queue/c-1/batches" / batch / "tasks.jsonl").read_text()
    assert '"=HYPERLINK' in jsonl  # the machine-read copy keeps the text as written
