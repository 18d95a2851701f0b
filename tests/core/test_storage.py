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
from alignment_dagster.core.storage import MANIFEST, LocalStorage, open_storage
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
