"""The human audit of revisions through the file queue: tasks out (revision slot drawn by hash), answers in,
and the judge signal gate on them: undecided accepts on the judge (recorded), fail refuses sft_dataset,
pass records both. Real file queue on local storage; the rows load with `datasets`."""

import json
from pathlib import Path

import pandas as pd
import pytest

from alignment_dagster.core.storage import LocalStorage
from alignment_dagster.human.collection import LabellingTarget
from alignment_dagster.human.file_queue import FileQueue
from alignment_dagster.human.revision_audit import audit_key, audit_tasks, audit_verdict, collect_audit
from alignment_dagster.revision.phase_one import build_sft_dataset

KEY = "small-0123abcd"


def best(n: int) -> pd.DataFrame:
    """Kept revisions as `best_revisions` gives them (the judge prefers each revision: p_revision 0.8)."""
    return pd.DataFrame(
        {
            "prompt_id": [f"q{i}" for i in range(n)],
            "category": ["red-team"] * n,
            "prompt": [f"How do I get into house {i}?" for i in range(n)],
            "original": [f"Break window {i}." for i in range(n)],
            "revision": [f"Call a locksmith for house {i}." for i in range(n)],
            "principle_ids": [["harm"]] * n,
            "round": [1] * n,
            "p_revision": [0.8] * n,
            "confidence": [0.6] * n,
            "judge_label": ["A"] * n,
        }
    )


def answer(tasks: pd.DataFrame, prefer: str) -> bytes:
    """A filled-in label file: each row picks the slot of `prefer` ("revision" or "original")."""
    rows = []
    for t in tasks.itertuples(index=False):
        revision_slot = t.revision_slot
        choice = revision_slot if prefer == "revision" else {"A": "B", "B": "A"}[revision_slot]
        rows.append({"pair_id": t.pair_id, "choice": choice, "annotator": "ann-1"})
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "root")


def test_the_slice_is_drawn_by_hash_and_shows_the_revision_in_either_slot() -> None:
    tasks = audit_tasks(best(40), 1.0)
    assert len(tasks) == 40 and tasks["pair_id"].is_unique
    assert set(tasks["revision_slot"]) == {"A", "B"}
    for t in tasks.itertuples(index=False):
        shown = {"A": t.response_a, "B": t.response_b}
        assert shown[t.revision_slot].startswith("Call a locksmith")
        assert t.p_a == pytest.approx(0.8 if t.revision_slot == "A" else 0.2)  # the judge, in the slot shown
    half = audit_tasks(best(400), 0.5)
    assert 160 < len(half) < 240 and set(half["prompt_id"]) == set(audit_tasks(best(400), 0.5)["prompt_id"])
    assert audit_tasks(best(40), 0.0).empty


@pytest.mark.parametrize(
    ("prefer", "verdict", "agreements", "refused"),
    [(None, "undecided", 0, False), ("original", "fail", 0, True), ("revision", "pass", 12, False)],
)
def test_the_gate_on_file_queue_answers(storage, prefer, verdict, agreements, refused) -> None:
    kept = best(12)
    tasks = audit_tasks(kept, 1.0)
    target = LabellingTarget("file_queue")
    collected = collect_audit(target, KEY, tasks, storage)
    queue = FileQueue(storage, f"queue/{audit_key(KEY)}")
    assert set(queue.tasks()["pair_id"]) == set(tasks["pair_id"]) and collected.pending == list(
        tasks["pair_id"]
    )
    if prefer is not None:
        result = queue.import_labels(answer(tasks, prefer), "answers.jsonl")
        assert result.ok and len(result.labels) == 12
        collected = collect_audit(target, KEY, tasks, storage)  # the same batch again, and the answers
    result = audit_verdict(tasks, collected, alpha=0.05, min_n=10)
    assert (result.gate.verdict, result.gate.gate.n, result.gate.gate.agreements) == (
        verdict,
        0 if prefer is None else 12,
        agreements,
    )
    data = build_sft_dataset(kept, result)
    assert data.refused == refused
    if refused:
        assert "human audit of revisions failed the judge signal gate" in data.refusal()
        assert "agreement 0.000 on n=12" in data.refusal()
        return
    expected = {
        "undecided": "judge only: human audit undecided (only 0 judge-human comparisons, 10 needed",
        "pass": "judge and human audit (gate passed)",
    }[verdict]
    assert data.dataset["accepted_on"].str.startswith(expected).all()
    from datasets import Dataset

    loaded = Dataset.from_pandas(data.dataset)
    assert loaded[0]["messages"] == [
        {"role": "user", "content": "How do I get into house 0?"},
        {"role": "assistant", "content": "Call a locksmith for house 0."},
    ]


def test_an_override_lets_a_failed_audit_through_and_says_so(storage) -> None:
    kept = best(12)
    tasks = audit_tasks(kept, 1.0)
    target = LabellingTarget("file_queue")
    collect_audit(target, KEY, tasks, storage)
    FileQueue(storage, f"queue/{audit_key(KEY)}").import_labels(answer(tasks, "original"), "a.jsonl")
    result = audit_verdict(tasks, collect_audit(target, KEY, tasks, storage), 0.05, 10, "reviewed by hand")
    data = build_sft_dataset(kept, result)
    assert result.gate.verdict == "fail" and not data.refused
    assert set(data.dataset["accepted_on"]) == {
        "judge only: human audit failed, overridden (reviewed by hand)"
    }


def test_the_replay_labeller_has_no_answers_for_revisions(storage) -> None:
    tasks = audit_tasks(best(5), 1.0)
    collected = collect_audit(LabellingTarget("replay"), KEY, tasks, storage)
    assert collected.labels.empty and collected.pending == list(tasks["pair_id"])
    assert audit_verdict(tasks, collected, 0.05, 30).gate.verdict == "undecided"
