"""Watched libraries of versioned YAML: constitutions and blends (a local folder, optionally an S3 prefix)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from dagster import ConfigurableResource
from dagster_aws.s3 import S3Resource
from pydantic import Field

from alignment_dagster.core.watched import (
    ListedFiles,
    ScanPlan,
    SourceFile,
    find_by_key,
    list_sources,
    load_version,
    plan_updates,
)
from alignment_dagster.core.yaml_files import SpecError
from alignment_dagster.resources.storage_io import BoundedS3Resource
from alignment_dagster.specs.blend import Blend, parse_blend
from alignment_dagster.specs.constitution import Constitution, parse_constitution


@contextmanager
def _listing_failures(listed: ListedFiles) -> Iterator[None]:
    """A lookup that fails while part of the library could not be listed says so."""
    try:
        yield
    except SpecError as e:
        if not listed.failed:
            raise
        raise SpecError(e.source, e.field, f"{e.message}; {'; '.join(listed.failed.values())}") from None


class WatchedLibrary(ConfigurableResource):
    folder: str = Field(description="Local folder of YAML files.")
    s3_uri: str | None = Field(None, description="Optional s3://bucket/prefix also watched.")
    s3: S3Resource = Field(default_factory=BoundedS3Resource)

    # A constitution's key ends in its content hash, so two files share one only when they say the same thing;
    # a blend's key is its name's slug, so two different files can claim it.
    keys_can_clash: ClassVar[bool] = True

    def parse(self, raw: bytes, source: str) -> Any:
        raise NotImplementedError

    def plan(self, seen: dict[str, str]) -> ScanPlan:
        """Which files are new or changed since `seen` (a sensor cursor), parsed; see `plan_updates`."""
        return plan_updates(self.listing(), seen, self.parse, check_clashes=self.keys_can_clash)

    @property
    def where(self) -> str:
        return self.folder + (f" or {self.s3_uri}" if self.s3_uri else "")

    def listing(self) -> ListedFiles:
        """The folder's files and the S3 prefix's; a prefix that cannot be listed is reported, not raised."""
        return list_sources(self.folder, self.s3_uri, self.s3.get_client)

    def files(self) -> list[SourceFile]:
        return self.listing().files

    def find(self, partition_key: str) -> tuple[str, bytes, Any]:
        """(source, bytes, parsed) of the file whose current content has this partition key."""
        listed = self.listing()
        with _listing_failures(listed):
            return find_by_key(listed.files, partition_key, self.parse, self.where)

    def version(self, partition_key: str, source: str | None) -> tuple[str, bytes, Any]:
        """The file of one version: the one the sensor saw (`source`), or any that has the key now."""
        listed = self.listing()
        with _listing_failures(listed):
            return load_version(listed.files, partition_key, source, self.parse, self.where)


class ConstitutionLibrary(WatchedLibrary):
    """Where constitution YAML files are watched and looked up by partition key."""

    keys_can_clash: ClassVar[bool] = False

    def parse(self, raw: bytes, source: str) -> Constitution:
        return parse_constitution(raw, source)


class BlendLibrary(WatchedLibrary):
    """Where blend YAML files are watched and looked up by partition key (the blend's name slug)."""

    def parse(self, raw: bytes, source: str) -> Blend:
        return parse_blend(raw, source)
