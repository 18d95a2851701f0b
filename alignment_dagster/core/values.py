"""How asset values are stored: tables as Parquet, mappings, lists and pydantic models as JSON, model folders
as content-addressed directories (each file once under `blobs/sha256/`, `core.storage`; no pickle). Layout:
`<asset>/<partition keys...>/data.parquet | data.json | model/`."""

from __future__ import annotations

import atexit
import io
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel

from alignment_dagster.core.keys import validate_key
from alignment_dagster.core.storage import Storage

TABLE, DOCUMENT, MODEL = "data.parquet", "data.json", "model"


@dataclass(frozen=True)
class ModelDir:
    """A model (or any folder artifact) on local disk; stored as a directory."""

    path: Path


def scratch_dir(name: str) -> Path:
    """A local folder for a value that is returned as a `ModelDir`: the IO manager copies it into storage
    after the asset returns, so it must outlive the asset's function; it goes when the process exits."""
    path = Path(tempfile.mkdtemp(prefix=f"alignment-{name}-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def value_prefix(asset_path: list[str], partition_keys: list[str]) -> str:
    """`<asset>/<key>/...`, every component validated before it touches a path."""
    for part in asset_path:
        # Asset keys are Python identifiers; the check keeps a crafted key from escaping the root.
        validate_key(part.replace("_", "-"), "asset key")
    return "/".join([*asset_path, *(validate_key(k) for k in partition_keys)])


def write_value(store: Storage, prefix: str, obj: Any) -> str:
    """Store `obj` under `prefix`; returns where it went."""
    if isinstance(obj, pd.DataFrame):
        buf = io.BytesIO()
        obj.to_parquet(buf, index=False)
        key, data = f"{prefix}/{TABLE}", buf.getvalue()
    elif isinstance(obj, BaseModel):
        key, data = f"{prefix}/{DOCUMENT}", obj.model_dump_json(indent=1).encode()
    elif isinstance(obj, dict | list):
        key, data = f"{prefix}/{DOCUMENT}", json.dumps(obj, indent=1, sort_keys=True, default=str).encode()
    elif isinstance(obj, ModelDir):
        store.put_dir(f"{prefix}/{MODEL}", obj.path, content_addressed=True)
        return store.url(f"{prefix}/{MODEL}")
    else:
        raise TypeError(
            f"cannot store {type(obj).__name__}; return a pandas DataFrame, a dict/list or pydantic "
            "model (JSON) or a ModelDir"
        )
    store.write_bytes(key, data)
    return store.url(key)


def read_value(store: Storage, prefix: str, expected: type | None = None) -> Any:
    """The value stored under `prefix`; JSON comes back as `expected` when that is a pydantic model."""
    if store.exists(f"{prefix}/{TABLE}"):
        return pd.read_parquet(io.BytesIO(store.read_bytes(f"{prefix}/{TABLE}")))
    if store.exists(f"{prefix}/{DOCUMENT}"):
        raw = store.read_bytes(f"{prefix}/{DOCUMENT}")
        if isinstance(expected, type) and issubclass(expected, BaseModel):
            return expected.model_validate_json(raw)
        return json.loads(raw)
    if store.dir_exists(f"{prefix}/{MODEL}"):
        local = store.local_path(f"{prefix}/{MODEL}")
        if local is None:
            local = Path(tempfile.mkdtemp(prefix="alignment-model-"))
            store.get_dir(f"{prefix}/{MODEL}", local)
        return ModelDir(local)
    raise FileNotFoundError(f"nothing stored at {store.url(prefix)}: materialize the upstream asset first")


def stored_values(
    store: Storage, asset: str, exclude: str | None = None, expected: type | None = None, kind: str = TABLE
) -> dict[str, Any]:
    """{partition key: value} of a one-dimension partitioned asset: every partition that holds a `kind` file
    (TABLE or DOCUMENT), but `exclude`."""
    keys = sorted(
        {k.split("/")[1] for k in store.list(asset) if k.count("/") == 2 and k.endswith(f"/{kind}")}
    )
    return {key: read_value(store, f"{asset}/{key}", expected) for key in keys if key != exclude}
