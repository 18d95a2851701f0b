"""Storage resource and the one IO manager for every data asset (Parquet, JSON, model folders; no pickle)."""

from __future__ import annotations

import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from dagster import (
    ConfigurableIOManager,
    ConfigurableResource,
    InputContext,
    MultiPartitionKey,
    OutputContext,
)
from dagster_aws.s3 import S3Resource
from pydantic import Field

from alignment_dagster.core.keys import validate_key
from alignment_dagster.core.storage import Storage, open_storage, read_uri


@dataclass(frozen=True)
class ModelDir:
    """A model (or any folder artifact) on local disk; the IO manager stores it as a directory."""

    path: Path


class StorageResource(ConfigurableResource):
    """Where pipeline data lives: a local folder or `s3://bucket/prefix` (boto3 through dagster-aws)."""

    base_uri: str = Field(description="Local folder or s3://bucket/prefix for all pipeline data.")
    s3: S3Resource = Field(default_factory=S3Resource, description="S3 client settings (endpoint, region).")

    def open(self) -> Storage:
        return open_storage(self.base_uri, self.s3.get_client)

    def read_uri(self, uri: str) -> bytes:
        return read_uri(uri, self.s3.get_client)


# Dimension order in paths: constitution before blend, whatever order Dagster sorts them in.
_DIMENSION_ORDER = {"constitution": 0, "blend": 1}


def partition_path(partition_key: str | MultiPartitionKey | None) -> str:
    """Path fragment for a partition key; every component is validated before it touches a path."""
    if partition_key is None:
        return ""
    if isinstance(partition_key, MultiPartitionKey):
        dims = sorted(
            partition_key.keys_by_dimension.items(), key=lambda kv: (_DIMENSION_ORDER.get(kv[0], 9), kv[0])
        )
        return "/".join(validate_key(v, f"{d} partition key") for d, v in dims)
    return validate_key(partition_key)


def asset_prefix(asset_path: list[str], partition_key: str | MultiPartitionKey | None) -> str:
    for part in asset_path:
        # Asset keys are Python identifiers; the check keeps a crafted key from escaping the root.
        validate_key(part.replace("_", "-"), "asset key")
    parts = list(asset_path)
    frag = partition_path(partition_key)
    return "/".join(parts + ([frag] if frag else []))


class AlignmentIOManager(ConfigurableIOManager):
    """Tables as Parquet, dicts/lists as JSON, `ModelDir` as a directory; atomic writes, no pickle.

    Layout: `<root>/<asset>/<partition dims...>/data.parquet|data.json|model/`.
    """

    storage: StorageResource

    def _prefix(self, context: OutputContext | InputContext, partition_key: Any) -> str:
        return asset_prefix(list(context.asset_key.path), partition_key)

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        if obj is None:
            return
        store = self.storage.open()
        pk = context.partition_key if context.has_partition_key else None
        prefix = self._prefix(context, pk)
        if isinstance(obj, pd.DataFrame):
            buf = io.BytesIO()
            obj.to_parquet(buf, index=False)
            store.write_bytes(f"{prefix}/data.parquet", buf.getvalue())
            uri = store.url(f"{prefix}/data.parquet")
        elif isinstance(obj, (dict, list)):
            store.write_bytes(
                f"{prefix}/data.json", json.dumps(obj, indent=1, sort_keys=True, default=str).encode()
            )
            uri = store.url(f"{prefix}/data.json")
        elif isinstance(obj, ModelDir):
            store.put_dir(f"{prefix}/model", obj.path)
            uri = store.url(f"{prefix}/model")
        else:
            raise TypeError(
                f"{context.asset_key.to_user_string()}: cannot store {type(obj).__name__}; "
                "return a pandas DataFrame, a dict/list (JSON) or a ModelDir"
            )
        context.add_output_metadata({"storage_uri": uri})

    def _load_one(self, store: Storage, prefix: str) -> Any:
        if store.exists(f"{prefix}/data.parquet"):
            return pd.read_parquet(io.BytesIO(store.read_bytes(f"{prefix}/data.parquet")))
        if store.exists(f"{prefix}/data.json"):
            return json.loads(store.read_bytes(f"{prefix}/data.json"))
        if store.dir_exists(f"{prefix}/model"):
            local = store.local_path(f"{prefix}/model")
            if local is None:
                local = Path(tempfile.mkdtemp(prefix="alignment-model-"))
                store.get_dir(f"{prefix}/model", local)
            return ModelDir(local)
        raise FileNotFoundError(
            f"nothing stored at {store.url(prefix)}: materialize the upstream asset first"
        )

    def load_input(self, context: InputContext) -> Any:
        store = self.storage.open()
        if not context.has_asset_partitions:
            return self._load_one(store, self._prefix(context, None))
        keys = context.asset_partition_keys
        if len(keys) == 1:
            return self._load_one(store, self._prefix(context, keys[0]))
        return {str(k): self._load_one(store, self._prefix(context, k)) for k in keys}
