"""Prompt pool: normalisation, dedup, deterministic split, bad rows, and the asset on real storage/MLflow."""

import csv
import gzip
import io
import json
from pathlib import Path

import boto3
import pandas as pd
from dagster import DagsterInstance, materialize
from dagster_aws.s3 import S3Resource

from alignment_dagster.assets.prompt_pool import prompt_pool
from alignment_dagster.data.prompts import (
    STARTER_SOURCES,
    build_prompt_pool,
    normalise_prompt,
    prompt_id_for,
    split_for,
)
from alignment_dagster.resources.storage_io import AlignmentIOManager, StorageResource
from alignment_dagster.resources.tracking import MLflowTracking
from tests.conftest import SHARED_DATA


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def test_normalise_and_ids() -> None:
    assert normalise_prompt("  Hello\n\n  world\t! ") == "Hello world !"
    assert prompt_id_for("Hello world") == prompt_id_for("hello WORLD")
    assert prompt_id_for("Hello world") != prompt_id_for("Hello world.")
    assert len(prompt_id_for("x")) == 16


def test_split_is_deterministic_and_near_fraction() -> None:
    ids = [prompt_id_for(f"prompt number {i}") for i in range(2000)]
    splits = [split_for(i, 0.2) for i in ids]
    assert splits == [split_for(i, 0.2) for i in ids]
    share = splits.count("eval") / len(splits)
    assert 0.17 < share < 0.23
    assert [split_for(i, 0.0) for i in ids].count("eval") == 0
    assert [split_for(i, 0.2, salt="other") for i in ids] != splits


def test_dedup_bad_rows_and_formats(tmp_path: Path) -> None:
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text(
        "\n".join(
            [
                json.dumps({"prompt": "How do I bake bread?", "category": "Helpful"}),  # row 1
                json.dumps({"prompt": "How do I bake bread?", "category": "helpful"}),  # 2 exact dup
                json.dumps({"prompt": "  how do I   BAKE bread? "}),  # 3 normalised dup
                "{not json",  # 4
                json.dumps({"text": "no prompt field"}),  # 5
                json.dumps({"prompt": 42}),  # 6
                json.dumps({"prompt": "   "}),  # 7 empty after normalisation
                json.dumps({"prompt": "Tell me a joke", "category": 7}),  # 8 bad category
                json.dumps(["a", "list"]),  # 9
                json.dumps({"prompt": "x" * 9000}),  # 10 too long
                json.dumps({"prompt": "Tell me a joke"}),  # 11 ok, default category
            ]
        )
        + "\n"
    )
    csv_path = tmp_path / "b.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "category"])
        w.writerow(["How do I pick a lock?", "red team"])
        w.writerow(["tell me a joke", "helpful"])  # normalised dup of a.jsonl row 11
        w.writerow(["a", "b", "extra cell"])
    pq_path = tmp_path / "c.parquet"
    pd.DataFrame({"prompt": ["What is 2+2?", None], "category": ["math", "math"]}).to_parquet(pq_path)
    gz_path = tmp_path / "d.jsonl.gz"
    gz_path.write_bytes(gzip.compress(json.dumps({"prompt": "Gzipped prompt"}).encode() + b"\n"))

    pool = build_prompt_pool(
        [str(jsonl), str(csv_path), str(pq_path), str(gz_path)], _read, eval_fraction=0.5
    )
    df = pool.prompts
    assert df["prompt"].tolist() == [
        "How do I bake bread?",
        "Tell me a joke",
        "How do I pick a lock?",
        "What is 2+2?",
        "Gzipped prompt",
    ]
    assert df["category"].tolist() == ["helpful", "general", "red-team", "math", "general"]
    assert df["prompt_id"].is_unique
    assert set(df["split"]) <= {"train", "eval"}
    assert pool.exact_duplicates == 1 and pool.normalised_duplicates == 2 and pool.empty == 1
    assert pool.rows_read == 11 + 3 + 2 + 1
    bad = [str(b) for b in pool.bad_rows]
    assert bad == [
        f"{jsonl}: row 4: invalid JSON (Expecting property name enclosed in double quotes at column 2)",
        f"{jsonl}: row 5: prompt: missing",
        f"{jsonl}: row 6: prompt: expected a string, got int",
        f"{jsonl}: row 8: category: expected a string, got int",
        f"{jsonl}: row 9: expected a JSON object, got list",
        f"{jsonl}: row 10: prompt: 9000 characters, over the 8000 limit",
        f"{csv_path}: row 3: more cells than header columns",
        f"{pq_path}: row 2: prompt: missing",
    ]


def test_unknown_format_is_a_clear_error_of_its_own_file(tmp_path: Path) -> None:
    p = tmp_path / "prompts.txt"
    p.write_text("hello")
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"prompt": "kept"}) + "\n")
    pool = build_prompt_pool([str(p), str(good)], _read)
    assert [str(b) for b in pool.bad_rows] == [
        f"{p}: unknown file format (use .jsonl, .csv or .parquet, optionally .gz)"
    ]
    assert list(pool.prompts["prompt"]) == ["kept"]


def test_damaged_files_are_reported_by_name_and_good_sources_kept(tmp_path: Path) -> None:
    rows = "".join(json.dumps({"prompt": f"hello {i}"}) + "\n" for i in range(5)).encode()
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(gzip.compress(rows)[:-10])  # ends inside row 5
    not_gzip = tmp_path / "junk.jsonl.gz"
    not_gzip.write_bytes(b"\x1f\x8b" + b"garbage" * 5)
    not_parquet = tmp_path / "junk.parquet"
    not_parquet.write_bytes(b"PAR1garbage")
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"prompt": "Still here"}) + "\n")

    pool = build_prompt_pool([str(truncated), str(not_gzip), str(not_parquet), str(good)], _read)
    assert pool.prompts["prompt"].tolist() == ["hello 0", "hello 1", "hello 2", "hello 3", "Still here"]
    assert pool.rows_read == 5
    bad = [str(b) for b in pool.bad_rows]
    assert bad[:2] == [
        f"{truncated}: truncated after row 4",
        f"{not_gzip}: not readable as gzip (Error -3 while decompressing data: unknown compression method)",
    ]
    assert len(bad) == 3 and bad[2].startswith(f"{not_parquet}: not readable as Parquet (")
    assert [b.row for b in pool.bad_rows] == [None, None, None]


def test_encoding_and_line_breaks_cost_only_the_bad_row(tmp_path: Path) -> None:
    # U+2028 and U+0085 are legal inside a JSON string: they must not split a row.
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_bytes(
        json.dumps({"prompt": "line one\u2028line two\x85end"}, ensure_ascii=False).encode()
        + b"\r\n"
        + b'{"prompt": "caf\xe9"}\n'  # row 2: Latin-1, not UTF-8
        + json.dumps({"prompt": "next"}).encode()
        + b"\n"
    )
    # A spreadsheet's BOM before the header; row 2 over csv's 128 KiB field limit; row 3 not UTF-8.
    csv_path = tmp_path / "b.csv"
    csv_path.write_bytes(
        b"\xef\xbb\xbfprompt,category\nfirst,x\n" + b"y" * 200_000 + b",x\ncaf\xe9,x\nlast,x\n"
    )
    utf16 = tmp_path / "c.csv"
    utf16.write_bytes("prompt\nhello\n".encode("utf-16"))

    pool = build_prompt_pool([str(jsonl), str(csv_path), str(utf16)], _read)
    assert pool.prompts["prompt"].tolist() == ["line one line two end", "next", "first", "last"]
    assert set(pool.prompts["category"]) == {"general", "x"}
    assert [str(b) for b in pool.bad_rows] == [
        f"{jsonl}: row 2: not UTF-8 text",
        f"{csv_path}: row 2: prompt: 200000 characters, over the 8000 limit",
        f"{csv_path}: row 3: not UTF-8 text in column 'prompt'",
        f"{utf16}: header is not UTF-8 text",
    ]
    assert pool.rows_read == 3 + 4


def test_starter_pool_has_helpful_and_red_team_prompts() -> None:
    pool = build_prompt_pool(list(STARTER_SOURCES), _read)
    counts = pool.counts_by_category()
    assert counts["helpful"] >= 50 and counts["red-team"] >= 1000
    assert not pool.bad_rows
    # The red-team prompts are the first human turns of the shared HH-RLHF dev file.
    first_turns = set()
    with gzip.open(SHARED_DATA, "rt") as f:
        for line in f:
            t = json.loads(line)["chosen"]
            first_turns.add(normalise_prompt(t.split("\n\nHuman: ", 1)[1].split("\n\nAssistant:")[0]))
    red = set(pool.prompts.loc[pool.prompts["category"] == "red-team", "prompt"])
    assert red <= first_turns and len(red) >= 0.95 * len(first_turns)
    assert 0.15 < (pool.prompts["split"] == "eval").mean() < 0.25


def test_prompt_pool_asset_reads_s3_and_reports(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    body = "\n".join(
        [
            json.dumps({"prompt": "Explain DNS.", "category": "helpful"}),
            "oops",
            json.dumps({"prompt": "explain  dns."}),
        ]
    )
    client.put_object(Bucket=s3_bucket, Key="prompts/p.jsonl", Body=body.encode())
    s3 = S3Resource(endpoint_url=s3_endpoint)
    storage = StorageResource(base_uri=f"s3://{s3_bucket}/root", s3=s3)
    tracking = MLflowTracking(
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_location=str(tmp_path / "art")
    )
    result = materialize(
        [prompt_pool],
        instance=DagsterInstance.ephemeral(),
        resources={"storage": storage, "io_manager": AlignmentIOManager(storage=storage), "mlflow": tracking},
        run_config={"ops": {"prompt_pool": {"config": {"sources": [f"s3://{s3_bucket}/prompts/p.jsonl"]}}}},
    )
    assert result.success
    meta = result.asset_materializations_for_node("prompt_pool")[0].metadata
    assert meta["n_prompts"].value == 1
    assert meta["normalised_duplicates"].value == 1
    assert meta["bad_rows"].value == 1
    assert "row 2: invalid JSON" in meta["bad_row_examples"].value
    assert meta["by_category"].value == {"helpful": 1}
    assert "Explain DNS." in meta["preview"].value
    stored = client.get_object(Bucket=s3_bucket, Key="root/prompt_pool/data.parquet")["Body"].read()
    assert pd.read_parquet(io.BytesIO(stored))["prompt"].tolist() == ["Explain DNS."]
