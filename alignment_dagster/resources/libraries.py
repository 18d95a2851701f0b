"""Watched libraries of versioned YAML: constitutions and blends (a local folder, optionally an S3 prefix)."""

from __future__ import annotations

from typing import Any, ClassVar

from dagster import ConfigurableResource
from dagster_aws.s3 import S3Resource
from pydantic import Field

from alignment_dagster.core.watched import (
    ScanPlan,
    SourceFile,
    find_by_key,
    list_folder,
    list_s3_prefix,
    load_version,
    plan_updates,
)
from alignment_dagster.specs.blend import Blend, parse_blend
from alignment_dagster.specs.constitution import Constitution, parse_constitution


class WatchedLibrary(ConfigurableResource):
    folder: str = Field(description="Local folder of YAML files.")
    s3_uri: str | None = Field(None, description="Optional s3://bucket/prefix also watched.")
    s3: S3Resource = Field(default_factory=S3Resource)

    # A constitution's key ends in its content hash, so two files share one only when they say the same thing;
    # a blend's key is its name's slug, so two different files can claim it.
    keys_can_clash: ClassVar[bool] = True

    def parse(self, raw: bytes, source: str) -> Any:
        raise NotImplementedError

    def plan(self, seen: dict[str, str]) -> ScanPlan:
        """Which files are new or changed since `seen` (a sensor cursor), parsed; see `plan_updates`."""
        return plan_updates(self.files(), seen, self.parse, check_clashes=self.keys_can_clash)

    @property
    def where(self) -> str:
        return self.folder + (f" or {self.s3_uri}" if self.s3_uri else "")

    def files(self) -> list[SourceFile]:
        files = list_folder(self.folder)
        if self.s3_uri:
            files += list_s3_prefix(self.s3_uri, self.s3.get_client())
        return files

    def find(self, partition_key: str) -> tuple[str, bytes, Any]:
        """(source, bytes, parsed) of the file whose current content has this partition key."""
        return find_by_key(self.files(), partition_key, self.parse, self.where)

    def version(self, partition_key: str, source: str | None) -> tuple[str, bytes, Any]:
        """The file of one version: the one the sensor saw (`source`), or any that has the key now."""
        return load_version(self.files(), partition_key, source, self.parse, self.where)


class ConstitutionLibrary(WatchedLibrary):
    """Where constitution YAML files are watched and looked up by partition key."""

    keys_can_clash: ClassVar[bool] = False

    def parse(self, raw: bytes, source: str) -> Constitution:
        return parse_constitution(raw, source)


class BlendLibrary(WatchedLibrary):
    """Where blend YAML files are watched and looked up by partition key (the blend's name slug)."""

    def parse(self, raw: bytes, source: str) -> Blend:
        return parse_blend(raw, source)
