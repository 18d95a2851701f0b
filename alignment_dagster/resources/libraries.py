"""Watched libraries of versioned YAML files: constitutions and blends (a local folder, optionally an S3 prefix)."""

from __future__ import annotations

from typing import Any

from dagster import ConfigurableResource
from dagster_aws.s3 import S3Resource
from pydantic import Field

from alignment_dagster.core.watched import SourceFile, list_folder, list_s3_prefix
from alignment_dagster.specs.blend import Blend, parse_blend
from alignment_dagster.specs.constitution import Constitution, ConstitutionError, parse_constitution


class _Library(ConfigurableResource):
    folder: str = Field(description="Local folder of YAML files.")
    s3_uri: str | None = Field(None, description="Optional s3://bucket/prefix also watched.")
    s3: S3Resource = Field(default_factory=S3Resource)

    def parse(self, raw: bytes, source: str) -> Any:
        raise NotImplementedError

    def files(self) -> list[SourceFile]:
        files = list_folder(self.folder)
        if self.s3_uri:
            files += list_s3_prefix(self.s3_uri, self.s3.get_client())
        return files

    def read(self, source: str) -> bytes:
        for f in self.files():
            if f.source == source:
                return f.read()
        raise ConstitutionError(source, None, "file not found in the watched library")

    def find(self, partition_key: str) -> tuple[str, bytes, Any]:
        """The file whose current content has this partition key; files that hold it with different content
        are an error (which one is meant?)."""
        found = []
        for f in self.files():
            try:
                raw = f.read()
                parsed = self.parse(raw, f.source)
            except ConstitutionError:
                continue
            if parsed.partition_key == partition_key:
                found.append((f.source, raw, parsed))
        if len({parsed.content_hash for _, _, parsed in found}) > 1:
            raise ConstitutionError(
                partition_key,
                None,
                f"held by {', '.join(s for s, _, _ in found)} with different "
                "content; give them different names",
            )
        if found:
            return found[0]
        where = self.folder + (f" or {self.s3_uri}" if self.s3_uri else "")
        raise ConstitutionError(
            partition_key,
            None,
            f"no file in {where} has this content any more (edited or deleted); earlier materializations "
            "of this version stay in storage",
        )


class ConstitutionLibrary(_Library):
    """Where constitution YAML files are watched and looked up by partition key."""

    def parse(self, raw: bytes, source: str) -> Constitution:
        return parse_constitution(raw, source)


class BlendLibrary(_Library):
    """Where blend YAML files are watched and looked up by partition key (the blend's name slug)."""

    def parse(self, raw: bytes, source: str) -> Blend:
        return parse_blend(raw, source)
