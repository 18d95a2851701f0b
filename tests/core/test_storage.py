"""Storage and the IO manager, on local disk and on a real S3 endpoint (moto server)."""

import json
from pathlib import Path

import boto3
import pandas as pd
import pytest
from dagster import (
    AssetExecutionContext,
    DagsterInstance,
    DynamicPartitionsDefinition,
    MultiPartitionKey,
    MultiPartitionsDefinition,
    asset,
    materialize,
)
from dagster_aws.s3 import S3Resource

from alignment_dagster.core.keys import InvalidKeyError
from alignment_dagster.core.storage import MANIFEST, LocalStorage, blob_key, open_storage
from alignment_dagster.core.values import ModelDir
from alignment_dagster.resources.storage_io import AlignmentIOManager, StorageResource, partition_path

cons = DynamicPartitionsDefinition(name="constitution")
blends = DynamicPartitionsDefinition(name="blend")
multi = MultiPartitionsDefinition({"constitution": cons, "blend": blends})


@asset
def table() -> pd.DataFrame:
    return pd.DataFrame({"pair_id": ["a", "b"], "p": [0.25, 0.75]})


@asset(partitions_def=cons)
def record(context: AssetExecutionContext, table: pd.DataFrame) -> dict:
    return {"key": context.partition_key, "rows": len(table)}


@asset(partitions_def=multi)
def reader(model: ModelDir, record: dict) -> dict:
    return {
        "config": json.loads((model.path / "sub" / "config.json").read_text()),
        "weights": (model.path / "weights.safetensors").read_bytes().hex(),
        "record": record,
    }


def _materialize_all(storage: StorageResource, tmp_path: Path) -> dict:
    from dagster import ConfigurableResource

    class Dir(ConfigurableResource):
        path: str

    @asset(partitions_def=multi, name="model")
    def model_asset(context: AssetExecutionContext, record: dict, scratch: Dir) -> ModelDir:
        out = Path(scratch.path) / "model-out"
        (out / "sub").mkdir(parents=True, exist_ok=True)
        (out / "weights.safetensors").write_bytes(b"\x00\x01weights")
        (out / "sub" / "config.json").write_text(json.dumps({"from": record["key"]}))
        return ModelDir(out)

    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("constitution", ["cai-0123abcd"])
    instance.add_dynamic_partitions("blend", ["hybrid"])
    resources = {"io_manager": AlignmentIOManager(storage=storage), "scratch": Dir(path=str(tmp_path))}
    assert materialize([table], instance=instance, resources=resources).success
    assert materialize(
        [table, record],
        selection=[record],
        partition_key="cai-0123abcd",
        instance=instance,
        resources=resources,
    ).success
    key = MultiPartitionKey({"constitution": "cai-0123abcd", "blend": "hybrid"})
    result = materialize(
        [table, record, model_asset, reader],
        selection=[model_asset, reader],
        partition_key=key,
        instance=instance,
        resources=resources,
    )
    assert result.success
    return result.output_for_node("reader")


def test_io_manager_round_trip_local(tmp_path: Path) -> None:
    root = tmp_path / "root"
    out = _materialize_all(StorageResource(base_uri=str(root)), tmp_path)
    assert out == {
        "config": {"from": "cai-0123abcd"},
        "weights": "000177656967687473",
        "record": {"key": "cai-0123abcd", "rows": 2},
    }
    # Layout: <root>/<asset>/<partition dims...>/<file>, constitution before blend; no pickle anywhere.
    assert pd.read_parquet(root / "table" / "data.parquet")["p"].tolist() == [0.25, 0.75]
    assert json.loads((root / "record" / "cai-0123abcd" / "data.json").read_text())["rows"] == 2
    assert (root / "model" / "cai-0123abcd" / "hybrid" / "model" / MANIFEST).is_file()
    assert (root / "reader" / "cai-0123abcd" / "hybrid" / "data.json").is_file()
    assert not list(root.rglob("*.pkl")) and not list(root.rglob("*.pickle"))
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_io_manager_round_trip_s3(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    storage = StorageResource(base_uri=f"s3://{s3_bucket}/pipeline", s3=S3Resource(endpoint_url=s3_endpoint))
    out = _materialize_all(storage, tmp_path)
    assert out["config"] == {"from": "cai-0123abcd"} and out["weights"] == "000177656967687473"
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"])
    assert "pipeline/table/data.parquet" in keys
    assert "pipeline/record/cai-0123abcd/data.json" in keys
    assert "pipeline/model/cai-0123abcd/hybrid/model/_MANIFEST.json" in keys
    manifest = json.loads(
        client.get_object(Bucket=s3_bucket, Key="pipeline/model/cai-0123abcd/hybrid/model/_MANIFEST.json")[
            "Body"
        ].read()
    )
    assert sorted(manifest["files"]) == ["sub/config.json", "weights.safetensors"]


class _DroppingClient:
    """A real boto3 client whose connection drops after `ok_uploads` uploads (fault injection)."""

    def __init__(self, client, ok_uploads: int):
        self._client = client
        self._left = ok_uploads

    def upload_file(self, *args, **kwargs):
        if self._left <= 0:
            raise ConnectionError("connection dropped mid-upload")
        self._left -= 1
        return self._client.upload_file(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_s3_directory_replacement_is_atomic(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    real = boto3.client("s3", endpoint_url=s3_endpoint)
    store = open_storage(f"s3://{s3_bucket}/p", lambda: real)
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "a.bin").write_bytes(b"one")
    (v1 / "old-only.bin").write_bytes(b"old")
    store.put_dir("m", v1)

    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "a.bin").write_bytes(b"two")
    (v2 / "b.bin").write_bytes(b"new")
    broken = open_storage(f"s3://{s3_bucket}/p", lambda: _DroppingClient(real, ok_uploads=1))
    with pytest.raises(ConnectionError):
        broken.put_dir("m", v2)
    # The upload died after one object: readers still get the complete old version.
    got = store.get_dir("m", tmp_path / "read1")
    assert (got / "a.bin").read_bytes() == b"one" and (got / "old-only.bin").read_bytes() == b"old"

    store.put_dir("m", v2)
    got = store.get_dir("m", tmp_path / "read2")
    assert (got / "a.bin").read_bytes() == b"two" and (got / "b.bin").read_bytes() == b"new"
    assert not (got / "old-only.bin").exists()
    assert [k for k in store.list("m") if k.endswith("old-only.bin")] == []


class _OneDeleteClient(_DroppingClient):
    """A real boto3 client whose connection drops after its first delete request."""

    def __init__(self, client):
        super().__init__(client, ok_uploads=0)
        self._deletes = 0

    def delete_objects(self, **kwargs):
        self._deletes += 1
        if self._deletes > 1:
            raise ConnectionError("connection dropped mid-delete")
        return self._client.delete_objects(**kwargs)


def test_s3_deletion_cut_short_leaves_no_complete_looking_directory(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str
) -> None:
    real = boto3.client("s3", endpoint_url=s3_endpoint)
    store = open_storage(f"s3://{s3_bucket}/p", lambda: real)
    ckpt = tmp_path / "checkpoint-1"
    ckpt.mkdir()
    for name in ["adapter.safetensors", "optimizer.pt", "trainer_state.json"]:
        (ckpt / name).write_bytes(b"x")
    store.put_dir("ckpt/checkpoint-1", ckpt)
    broken = open_storage(f"s3://{s3_bucket}/p", lambda: _OneDeleteClient(real))
    with pytest.raises(ConnectionError):
        broken.delete_prefix("ckpt")
    # The manifest went in the first request: the leftover files no longer read as a checkpoint.
    assert not store.dir_exists("ckpt/checkpoint-1")
    assert len(store.list("ckpt")) == 3


def test_local_writes_are_atomic(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    store.write_bytes("a/data.json", b'{"v": 1}')

    with pytest.raises(TypeError):
        store.write_bytes("a/data.json", object())  # type: ignore[arg-type]  # fails mid-write
    assert store.read_bytes("a/data.json") == b'{"v": 1}'
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["data.json"]  # no temp file left behind

    src = tmp_path / "src"
    src.mkdir()
    (src / "w.safetensors").write_bytes(b"1")
    store.put_dir("m", src)
    (src / "w.safetensors").write_bytes(b"2")
    store.put_dir("m", src)
    assert store.get_dir("m").joinpath("w.safetensors").read_bytes() == b"2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "m", "src"]


@pytest.mark.parametrize("key", ["../escape", "Upper", "a/b", "a b", ""])
def test_partition_keys_are_validated_before_paths(key: str) -> None:
    with pytest.raises(InvalidKeyError):
        partition_path(key)
    with pytest.raises(InvalidKeyError):
        partition_path(MultiPartitionKey({"constitution": "ok-key", "blend": key or "x/y"}))


def test_unsafe_storage_keys_rejected(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    for bad in ["../x", "/etc/passwd", "a/../../b", ""]:
        with pytest.raises(ValueError):
            store.write_bytes(bad, b"")


def _model_folder(path: Path, card: str, weights: bytes = b"\x00weights" * 64) -> Path:
    (path / "sub").mkdir(parents=True)
    (path / "model.safetensors").write_bytes(weights)
    (path / "sub" / "tokenizer.json").write_text('{"vocab": 1}')
    (path / "alignment.json").write_text(card)
    return path


def _bytes_on_disk(root: Path) -> int:
    """What `du -sb` counts: every inode once."""
    seen, total = set(), 0
    for p in root.rglob("*"):
        st = p.lstat()
        if p.is_file() and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def test_local_content_addressed_folders_share_their_bytes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store = LocalStorage(root)
    weights = b"\x00weights" * 64
    for i, key in enumerate(("reward_model/c-1/b-1/model", "reward_model/c-2/b-1/model", "cache/models/fp")):
        store.put_dir(
            key, _model_folder(tmp_path / f"src{i}", f'{{"n": {i}}}', weights), content_addressed=True
        )
    a, b = store.get_dir("reward_model/c-1/b-1/model"), store.get_dir("reward_model/c-2/b-1/model")
    # Ordinary folders to a loader; the identical files are one inode, the cards are not.
    assert (a / "model.safetensors").read_bytes() == weights and json.loads(
        (b / "alignment.json").read_text()
    )
    assert (a / "model.safetensors").stat().st_ino == (b / "model.safetensors").stat().st_ino
    assert (a / "alignment.json").read_text() != (b / "alignment.json").read_text()
    manifest = json.loads((a / MANIFEST).read_text())
    assert manifest["files"] == ["alignment.json", "model.safetensors", "sub/tokenizer.json"]
    blob = root / blob_key(manifest["sha256"]["model.safetensors"])
    assert blob.stat().st_ino == (a / "model.safetensors").stat().st_ino
    assert len(list((root / "blobs").rglob("*.*"))) == 0  # no temporary blob left
    # Three folders, one copy of the weights and tokenizer, three cards (and the manifests).
    manifests = sum(
        len((root / k / MANIFEST).read_bytes())
        for k in ("reward_model/c-1/b-1/model", "reward_model/c-2/b-1/model", "cache/models/fp")
    )
    assert _bytes_on_disk(root) == len(weights) + len('{"vocab": 1}') + 3 * len('{"n": 0}') + manifests

    # Replacing or deleting one folder leaves the others and the blob intact; a private copy is a copy.
    store.put_dir("reward_model/c-1/b-1/model", _model_folder(tmp_path / "new", "{}", b"other"), True)
    store.delete_prefix("cache/models/fp")
    assert (b / "model.safetensors").read_bytes() == weights and blob.read_bytes() == weights
    copy = store.get_dir("reward_model/c-2/b-1/model", tmp_path / "copy")
    (copy / "model.safetensors").write_bytes(b"scribbled")
    assert blob.read_bytes() == weights


def test_concurrent_writers_of_one_blob_leave_one_copy(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    store = LocalStorage(tmp_path / "root")
    weights = bytes(range(256)) * 4096  # 1 MiB: the writers overlap
    srcs = [_model_folder(tmp_path / f"src{i}", f'{{"n": {i}}}', weights) for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda i: store.put_dir(f"m/p-{i}/model", srcs[i], True), range(6)))
    inodes = {(tmp_path / "root" / f"m/p-{i}/model/model.safetensors").stat().st_ino for i in range(6)}
    assert len(inodes) == 1
    blobs = [p for p in (tmp_path / "root" / "blobs").rglob("*") if p.is_file()]
    assert len(blobs) == 8 and not [p for p in blobs if p.name.startswith(".")]  # weights, tokenizer, 6 cards


def test_s3_content_addressed_folder_is_a_manifest_over_shared_blobs(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str
) -> None:
    real = boto3.client("s3", endpoint_url=s3_endpoint)
    store = open_storage(f"s3://{s3_bucket}/p", lambda: real)
    weights = b"\x01w" * 512
    store.put_dir("a/model", _model_folder(tmp_path / "a", "{}", weights), content_addressed=True)
    store.put_dir("b/model", _model_folder(tmp_path / "b", '{"b": 1}', weights), content_addressed=True)
    assert store.list("a/model") == ["a/model/_MANIFEST.json"]
    blobs = store.list("blobs")
    assert len(blobs) == 4 and all(
        k.startswith("blobs/sha256/") for k in blobs
    )  # weights, tokenizer, 2 cards
    got = store.get_dir("b/model", tmp_path / "read")
    assert (got / "model.safetensors").read_bytes() == weights and (
        got / "alignment.json"
    ).read_text() == '{"b": 1}'
    assert (got / "sub" / "tokenizer.json").is_file()

    # An upload that dies mid-way leaves the previous folder complete; the retry publishes the new one.
    broken = open_storage(f"s3://{s3_bucket}/p", lambda: _DroppingClient(real, ok_uploads=1))
    new = _model_folder(tmp_path / "new", '{"v": 2}', b"new weights")
    with pytest.raises(ConnectionError):
        broken.put_dir("a/model", new, content_addressed=True)
    assert (store.get_dir("a/model", tmp_path / "r1") / "model.safetensors").read_bytes() == weights
    store.put_dir("a/model", new, content_addressed=True)
    assert (store.get_dir("a/model", tmp_path / "r2") / "model.safetensors").read_bytes() == b"new weights"
    # A folder stored the old way (in a version folder) becomes a manifest over blobs, its objects removed.
    store.put_dir("c/model", new)
    store.put_dir("c/model", new, content_addressed=True)
    assert store.list("c/model") == ["c/model/_MANIFEST.json"]
