"""Storage resource and the one IO manager for every asset (`core.values`: Parquet, JSON, model folders)."""

from __future__ import annotations

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

from alignment_dagster.core.storage import Storage, open_storage, read_uri
from alignment_dagster.core.values import (
    DOCUMENT,
    ModelDir,
    read_value,
    stored_values,
    value_prefix,
    write_value,
)
from alignment_dagster.training.checkpoints import StorageCheckpoints


class BoundedS3Resource(S3Resource):
    """dagster-aws's S3Resource with bounded waits: botocore's defaults (60 s connect, 60 s read, 5 attempts)
    let an endpoint that stops answering hold a call for minutes; these fail it within `worst_case_s()`
    (57 s by default: 3 attempts of at most 4 s connecting plus 14 s waiting, and the backoff between)."""

    max_attempts: int = Field(3, ge=1, description="Attempts per S3 call (botocore's standard retry mode).")
    connect_timeout_s: float = Field(4.0, gt=0, description="Seconds to wait for a connection.")
    read_timeout_s: float = Field(14.0, gt=0, description="Seconds to wait for each read of a response.")

    def worst_case_s(self) -> float:
        """Longest one call can take to fail: every attempt timing out, plus standard mode's backoff."""
        backoff = sum(min(20.0, 2.0**i) for i in range(self.max_attempts - 1))
        return self.max_attempts * (self.connect_timeout_s + self.read_timeout_s) + backoff

    def get_client(self) -> Any:
        import boto3
        from botocore.config import Config

        config = Config(
            connect_timeout=self.connect_timeout_s,
            read_timeout=self.read_timeout_s,
            retries={"max_attempts": self.max_attempts, "mode": "standard"},
        )
        client = boto3.session.Session(profile_name=self.profile_name).client(
            "s3",
            region_name=self.region_name,
            endpoint_url=self.endpoint_url,
            use_ssl=self.use_ssl,
            verify=self.verify,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            aws_session_token=self.aws_session_token,
            config=config,
        )
        if self.use_unsigned_session:
            from botocore.handlers import disable_signing

            client.meta.events.register("choose-signer.s3.*", disable_signing)
        return client


class StorageResource(ConfigurableResource):
    """Where pipeline data lives: a local folder or `s3://bucket/prefix` (boto3 through dagster-aws)."""

    base_uri: str = Field(description="Local folder or s3://bucket/prefix for all pipeline data.")
    s3: S3Resource = Field(
        default_factory=BoundedS3Resource, description="S3 client settings (endpoint, region, timeouts)."
    )

    def open(self) -> Storage:
        return open_storage(self.base_uri, self.s3.get_client)

    def read_uri(self, uri: str) -> bytes:
        return read_uri(uri, self.s3.get_client)

    def checkpoints(
        self, asset: str, partition_key: str | MultiPartitionKey, fingerprint: str
    ) -> tuple[StorageCheckpoints, list[str]]:
        """Training checkpoints of one partition and fingerprint (`checkpoints/<asset>/<partition>/<fp>`),
        after deleting the partition's checkpoints of other fingerprints (earlier data or configs: never
        resumable); returns them and the fingerprints deleted."""
        ckpts = StorageCheckpoints(
            self.open(), f"checkpoints/{asset}/{partition_path(partition_key)}/{fingerprint}"
        )
        return ckpts, ckpts.clear_stale()

    def stored_model(self, asset: str, partition_key: str | MultiPartitionKey) -> Path | None:
        """The model folder an asset's partition holds now (as the IO manager stored it), or None."""
        prefix = value_prefix([asset], partition_keys(partition_key))
        try:
            value = read_value(self.open(), prefix)
        except FileNotFoundError:
            return None
        return value.path if isinstance(value, ModelDir) else None

    def stored_table(self, asset: str, partition_key: str | MultiPartitionKey) -> pd.DataFrame | None:
        """The table an asset's partition holds now (as the IO manager stored it), or None."""
        try:
            value = read_value(self.open(), value_prefix([asset], partition_keys(partition_key)))
        except FileNotFoundError:
            return None
        return value if isinstance(value, pd.DataFrame) else None

    def stored_documents(self, asset: str, expected: type) -> dict[str, Any]:
        """{partition key: value} of every stored partition of a one-dimension asset stored as JSON."""
        return stored_values(self.open(), asset, expected=expected, kind=DOCUMENT)

    def other_partitions(self, asset: str, partition_key: str) -> dict[str, pd.DataFrame]:
        """Stored tables of every other partition of a one-dimension asset (as the IO manager stored them)."""
        return stored_values(self.open(), asset, exclude=partition_key)


# Dimension order in paths: constitution before blend, whatever order Dagster sorts them in.
_DIMENSION_ORDER = {"constitution": 0, "blend": 1}


def partition_keys(partition_key: str | MultiPartitionKey | None) -> list[str]:
    """A partition's path components, constitution before blend."""
    if partition_key is None:
        return []
    if isinstance(partition_key, MultiPartitionKey):
        dims = sorted(
            partition_key.keys_by_dimension.items(), key=lambda kv: (_DIMENSION_ORDER.get(kv[0], 9), kv[0])
        )
        return [v for _, v in dims]
    return [partition_key]


def partition_path(partition_key: str | MultiPartitionKey | None) -> str:
    """Path fragment for a partition key; every component is validated before it touches a path."""
    return value_prefix([], partition_keys(partition_key))


class AlignmentIOManager(ConfigurableIOManager):
    """Every asset value through `core.values` (atomic writes, no pickle); pydantic inputs come back typed."""

    storage: StorageResource

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        if obj is None:
            return
        # The asset's partition, not the run's: an unpartitioned asset (a shared input the sensor adds to a
        # partitioned run) is stored where its consumers read it, without the run's partition key.
        pk = context.asset_partition_key if context.has_asset_partitions else None
        prefix = value_prefix(list(context.asset_key.path), partition_keys(pk))
        try:
            uri = write_value(self.storage.open(), prefix, obj)
        except TypeError as e:
            raise TypeError(f"{context.asset_key.to_user_string()}: {e}") from None
        context.add_output_metadata({"storage_uri": uri})

    def load_input(self, context: InputContext) -> Any:
        store = self.storage.open()
        expected = getattr(context.dagster_type, "typing_type", None)

        def load(key: Any) -> Any:
            return read_value(
                store, value_prefix(list(context.asset_key.path), partition_keys(key)), expected
            )

        if not context.has_asset_partitions:
            return load(None)
        keys = context.asset_partition_keys
        if len(keys) == 1:
            return load(keys[0])
        return {str(k): load(k) for k in keys}
