"""Registered model versions refer to their weights by content: a real MLflow store (SQLite) and pipeline
storage on local disk and on a real S3 endpoint (moto server). MLflow's artifact store holds the card and a
reference, the weights live once in storage's blobs, and `download_registered` rebuilds the folder exactly."""

import json
from pathlib import Path

import boto3
import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import save_file

from alignment_dagster.core.storage import LocalStorage, blob_key, open_storage, tree_sha256
from alignment_dagster.training.artifacts import CONTENT, download_registered, log_and_register


def model_folder(path: Path, partition: str) -> Path:
    path.mkdir(parents=True)
    save_file({"w": torch.arange(4096, dtype=torch.float32)}, str(path / "model.safetensors"))
    (path / "config.json").write_text('{"hidden": 8}')
    (path / "alignment.json").write_text(json.dumps({"trained": True, "partition": partition}))
    return path


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[MlflowClient, str]:
    """One SQLite store for the module (creating its schema is most of these tests' time)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    client.search_experiments()  # creates the schema
    return client, uri


@pytest.fixture
def mlflow_run(mlflow_store, tmp_path: Path) -> tuple[MlflowClient, str, str]:
    """A run whose artifacts go to this test's `mlartifacts/` (an experiment per test)."""
    client, uri = mlflow_store
    exp = client.create_experiment(tmp_path.name, artifact_location=(tmp_path / "mlartifacts").as_uri())
    return client, client.create_run(exp).info.run_id, uri


def test_versions_share_weights_in_local_storage(tmp_path: Path, mlflow_run) -> None:
    client, run_id, uri = mlflow_run
    store = LocalStorage(tmp_path / "root")
    sources = {p: model_folder(tmp_path / p, p) for p in ("c-1|hybrid", "c-2|hybrid")}
    for i, (partition, src) in enumerate(sources.items()):
        log_and_register(
            client, run_id, src, f"reward-{i}", store, artifact_path=f"model-{i}", tags={"p": partition}
        )

    # MLflow's artifact store: the cards and two small references, no weights.
    logged = [p for p in (tmp_path / "mlartifacts").rglob("*") if p.is_file()]
    assert sorted(p.name for p in logged) == sorted([CONTENT, "alignment.json"] * 2)
    assert sum(p.stat().st_size for p in logged) < 4096
    # Storage: the weights and config once, one card per version.
    assert len([p for p in (tmp_path / "root" / "blobs").rglob("*") if p.is_file()]) == 4

    for i, src in enumerate(sources.values()):
        version = client.get_model_version(f"reward-{i}", "1")
        (ref_file,) = (tmp_path / "mlartifacts").glob(f"*/artifacts/model-{i}/{CONTENT}")
        ref = json.loads(ref_file.read_text())
        assert version.tags["alignment.content_sha256"] == tree_sha256(
            {rel: entry["sha256"] for rel, entry in ref["files"].items()}
        )
        assert ref["store"] == store.uri and version.tags["p"]
        got = download_registered(f"models:/reward-{i}/1", tmp_path / f"dl-{i}", uri)
        assert files(got) == files(src)  # byte for byte, and the reference is gone

    # A blob that no longer matches its digest, or is missing, is refused by name.
    digest = ref["files"]["model.safetensors"]["sha256"]
    blob = tmp_path / "root" / blob_key(digest)
    blob.write_bytes(b"scribbled")
    with pytest.raises(ValueError, match=f"model.safetensors from .* does not match its sha256 {digest}"):
        download_registered("models:/reward-1/1", tmp_path / "dl-bad", uri)
    blob.unlink()
    with pytest.raises(FileNotFoundError, match=f"model.safetensors \\(sha256 {digest}\\) is not in"):
        download_registered("models:/reward-1/1", tmp_path / "dl-missing", uri)


def test_versions_refer_to_s3_blobs(tmp_path: Path, mlflow_run, s3_endpoint: str, s3_bucket: str) -> None:
    client, run_id, uri = mlflow_run
    store = open_storage(f"s3://{s3_bucket}/pipeline", lambda: boto3.client("s3", endpoint_url=s3_endpoint))
    src = model_folder(tmp_path / "src", "c-1|hybrid")
    log_and_register(client, run_id, src, "policy-c-1-hybrid", store)
    assert len(store.list("blobs")) == 3
    got = download_registered("models:/policy-c-1-hybrid/1", tmp_path / "dl", uri, store=store)
    assert files(got) == files(src)
    # The version names its store; an S3 one needs the caller's client (endpoint, credentials).
    with pytest.raises(ValueError, match=f"s3://{s3_bucket}/pipeline: an S3 client is needed"):
        download_registered("models:/policy-c-1-hybrid/1", tmp_path / "dl2", uri)
