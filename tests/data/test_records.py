"""Input that costs only its own row or file: the one record reader (`data.records`) under hostile input, and
the prompt pool and pair import that read through it. Each case asserts the error (file, row, field) and that
the valid rows of the same file, and the other files, are kept."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from alignment_dagster.core.storage import read_uri
from alignment_dagster.data.pairs import MAX_CONVERSATION_CHARS, import_pairs
from alignment_dagster.data.prompts import build_prompt_pool
from alignment_dagster.data.records import iter_records, read_records


def _rows(uri: str, raw: bytes, **kw) -> tuple[list[tuple], list[str]]:
    good, bad = [], []
    for row, rec, error in iter_records(uri, raw, **kw):
        if rec is None:
            bad.append(f"row {row}: {error}")
        else:
            good.append((row, rec))
    return good, bad


def test_deep_nesting_and_huge_integers_cost_only_their_json_row() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    lines = [
        json.dumps({"prompt": "first"}),
        '{"prompt": "deep", "x": ' + deep + "}",
        '{"prompt": "big", "n": ' + "9" * 5000 + "}",
        json.dumps({"prompt": "last"}),
    ]
    good, bad = _rows("p.jsonl", "\n".join(lines).encode())
    assert [(row, rec["prompt"]) for row, rec in good] == [(1, "first"), (4, "last")]
    assert bad[0] == "row 2: invalid JSON (nested too deeply)"
    assert bad[1].startswith("row 3: invalid JSON (Exceeds the limit (4300 digits)")


def test_an_unclosed_csv_quote_costs_its_row_not_the_rows_after_it(tmp_path: Path) -> None:
    text = 'prompt,category\nfirst,general\n"never closed,general\nthird,general\nfourth,"help"\n'
    good, bad = _rows("p.csv", text.encode())
    assert [rec["prompt"] for _, rec in good] == ["first", "third", "fourth"]
    assert [row for row, _ in good] == [1, 3, 4]
    assert len(bad) == 1 and bad[0].startswith("row 2: bad quoting (")
    # The quote closes later and text follows it: the same, not one giant cell.
    good, bad = _rows("p.csv", b'prompt\nok\n"oops\nsecond\nthird "x" y\n')
    assert [rec["prompt"] for _, rec in good] == ["ok", "second", 'third "x" y'] and len(bad) == 1
    # Legitimate multi-line and quoted cells are untouched.
    good, bad = _rows("p.csv", b'prompt,category\n"line one\nline two, still",general\n"say ""hi""",x\n')
    assert [rec["prompt"] for _, rec in good] == ["line one\nline two, still", 'say "hi"'] and bad == []
    path = tmp_path / "prompts.csv"
    path.write_text(text)
    pool = build_prompt_pool([str(path)], read_uri)
    assert sorted(pool.prompts["prompt"]) == ["first", "fourth", "third"]
    assert [str(b).split(" (")[0] for b in pool.bad_rows] == [f"{path}: row 2: bad quoting"]


def test_a_gzip_that_decompresses_past_the_limit_keeps_the_rows_before_it() -> None:
    rows = "".join(json.dumps({"prompt": f"p{i}", "pad": "x" * 200}) + "\n" for i in range(2000)).encode()
    raw = gzip.compress(rows)
    assert len(raw) < 64 * 1024 < len(rows)
    good, bad = _rows("p.jsonl.gz", raw, max_decompressed=64 * 1024)
    assert 0 < len(good) < 2000 and [rec["prompt"] for _, rec in good] == [f"p{i}" for i in range(len(good))]
    assert bad == [f"row None: decompresses to more than 64 KiB: read up to row {len(good)}"]
    assert len(_rows("p.jsonl.gz", raw)[0]) == 2000  # under the default limit: everything


def test_a_missing_or_unreadable_source_costs_only_itself(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"prompt": "kept"}) + "\n")
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    sources = [str(tmp_path / "missing.jsonl"), str(folder), str(good)]
    pool = build_prompt_pool(sources, read_uri)
    assert list(pool.prompts["prompt"]) == ["kept"]
    assert [str(b) for b in pool.bad_rows] == [
        f"{tmp_path / 'missing.jsonl'}: cannot read file (No such file or directory)",
        f"{folder}: cannot read file (Is a directory)",
    ]
    pairs = import_pairs([str(tmp_path / "missing.jsonl")], read_uri)
    assert [str(b) for b in pairs.bad_rows] == [
        f"{tmp_path / 'missing.jsonl'}: cannot read file (No such file or directory)"
    ]


def test_devices_and_fifos_are_refused_without_reading(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)  # opening it for reading would block until a writer came
    records = list(read_records(str(fifo), read_uri))
    assert records == [(None, None, "cannot read file (not a regular file (a FIFO, device or socket))")]
    zero = tmp_path / "zero.jsonl"
    zero.symlink_to("/dev/zero")  # would never end
    assert list(read_records(str(zero), read_uri))[0][2].startswith("cannot read file (not a regular")


def test_imported_conversations_are_capped_like_prompts(tmp_path: Path) -> None:
    long = "Human: " + "why? " * (MAX_CONVERSATION_CHARS // 5)
    rows = [
        {"prompt": long, "response_a": "a", "response_b": "b"},
        {"chosen": long + "\n\nAssistant: yes", "rejected": long + "\n\nAssistant: no"},
        {"prompt": "Human: short", "response_a": "a", "response_b": "b"},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = import_pairs([str(path)], read_uri)
    assert list(result.pairs["prompt"]) == ["Human: short"]
    assert [(b.row, b.field) for b in result.bad_rows] == [(1, "prompt"), (2, "chosen")]
    assert all("over" in b.message for b in result.bad_rows)


def test_text_of_only_invisible_characters_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    invisible = ["\u200b\u200b", "\u200c\u2060\ufeff", " \u00ad ", "\u3164"]
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in [*invisible, "visible"]))
    pool = build_prompt_pool([str(path)], read_uri)
    assert list(pool.prompts["prompt"]) == ["visible"] and pool.empty == len(invisible)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        json.dumps({"prompt": "Human: hi", "response_a": "\u200b", "response_b": "hello"})
        + "\n"
        + json.dumps({"prompt": "\u200b\u200d", "response_a": "x", "response_b": "y"})
        + "\n"
    )
    result = import_pairs([str(pairs)], read_uri)
    assert result.pairs.empty and dict(result.dropped) == {"empty_response": 1, "empty_prompt": 1}


def test_lookalike_categories_are_refused_not_folded(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    rows = [
        {"prompt": "a", "category": "Red Team"},  # case and spaces: the documented slug rule
        {"prompt": "b", "category": "r\u0435d-team"},  # Cyrillic 'е': slugify would make it "rd-team"
        {"prompt": "c", "category": "\uff52\uff45\uff44-team"},  # full-width
        {"prompt": "d", "category": "red\u200b-team"},  # zero-width space
        {"prompt": "e", "category": "Médical"},  # an accent folds to its letter
    ]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    pool = build_prompt_pool([str(path)], read_uri)
    assert dict(zip(pool.prompts["prompt"], pool.prompts["category"], strict=True)) == {
        "a": "red-team",
        "e": "medical",
    }
    assert [(b.row, b.field) for b in pool.bad_rows] == [(2, "category"), (3, "category"), (4, "category")]
    assert "CYRILLIC SMALL LETTER IE" in pool.bad_rows[0].message
    assert "compatibility form" in pool.bad_rows[1].message
    assert "invisible character" in pool.bad_rows[2].message
