"""Watched folders of versioned YAML files (constitutions, blends): listing, change detection, lookup by key.

Plain functions: the sensors keep a small cursor {source: fingerprint} and ask `plan_updates` what is
new or changed. A fingerprint is the SHA-256 of a local file's bytes, or an S3 object's ETag (so an
unchanged object is never downloaded again). A file over the spec size limit is never read: its size and
modification time stand in for the hash, and reading it is its (reported) error. A listing that fails (an
S3 prefix that does not answer) is an error of that listing only: the other files are still planned, and
the failed listing's files keep their cursor entries until it answers again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from alignment_dagster.core.keys import sha256_hex
from alignment_dagster.core.redaction import redact_text
from alignment_dagster.core.storage import parse_s3_uri, read_s3_object
from alignment_dagster.core.yaml_files import MAX_FILE_BYTES, SpecError, read_spec_file

MAX_FILES = 500  # listings stay bounded: a sensor tick must finish well inside its time limit
SUFFIXES = (".yaml", ".yml")

T = TypeVar("T")


@dataclass(frozen=True)
class SourceFile:
    source: str  # local path or s3:// URI, as shown to users
    fingerprint: str
    read: Callable[[], bytes] = field(compare=False, repr=False)


def _local_file(path: Path) -> SourceFile | None:
    """A listed file, read once (bounded) for its hash; an oversized one is not read at all."""
    try:
        info = path.stat()
        if info.st_size > MAX_FILE_BYTES:
            fingerprint = f"size:{info.st_size}:{info.st_mtime_ns}"
            return SourceFile(str(path), fingerprint, read=lambda: read_spec_file(path))
        data = read_spec_file(path)
    except (OSError, SpecError):
        return None  # removed (or swapped for something unreadable) since listing: the next tick sees it
    return SourceFile(str(path), sha256_hex(data), read=lambda: data)


def list_folder(folder: str | Path, max_files: int = MAX_FILES) -> list[SourceFile]:
    root = Path(folder)
    if not root.is_dir():
        return []
    paths = sorted(
        p for p in root.iterdir() if p.is_file() and p.suffix in SUFFIXES and not p.name.startswith(".")
    )
    return [f for f in (_local_file(p) for p in paths[:max_files]) if f is not None]


def list_s3_prefix(uri: str, client: Any, max_files: int = MAX_FILES) -> list[SourceFile]:
    bucket, prefix = parse_s3_uri(uri)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    files: list[SourceFile] = []
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix, PaginationConfig={"MaxItems": max_files * 4}
    )
    for page in pages:
        for obj in page.get("Contents", []):
            key = obj["Key"]
            name = key[len(prefix) :]
            if "/" in name or not name.endswith(SUFFIXES) or name.startswith("."):
                continue
            files.append(
                SourceFile(
                    f"s3://{bucket}/{key}",
                    "etag:" + obj["ETag"].strip('"'),
                    read=lambda k=key: _read_s3_spec(client, bucket, k),
                )
            )
            if len(files) >= max_files:
                return files
    return files


def _read_s3_spec(client: Any, bucket: str, key: str) -> bytes:
    try:
        return read_s3_object(client, bucket, key, MAX_FILE_BYTES)
    except ValueError as e:  # over the limit
        raise SpecError(f"s3://{bucket}/{key}", None, str(e).replace("object is", "file is")) from None


@dataclass
class ListedFiles:
    files: list[SourceFile]
    failed: dict[str, str] = field(default_factory=dict)  # listing URI -> why it failed


def list_sources(folder: str | Path, s3_uri: str | None, s3_client: Callable[[], Any]) -> ListedFiles:
    """The files of a library's folder and optional S3 prefix; a listing that fails is reported in
    `failed` (by its URI) instead of failing the whole library."""
    files = list_folder(folder)
    failed: dict[str, str] = {}
    if s3_uri:
        try:
            files += list_s3_prefix(s3_uri, s3_client())
        except Exception as e:  # noqa: BLE001 - an unreachable prefix must not stop the local files
            failed[s3_uri] = redact_text(f"{s3_uri}: cannot list ({type(e).__name__}: {e})")
    return ListedFiles(files, failed)


@dataclass
class Update(Generic[T]):
    source: str
    fingerprint: str
    parsed: T
    raw: bytes


@dataclass
class ScanPlan(Generic[T]):
    updates: list[Update[T]]
    errors: list[str]
    cursor: dict[str, str]

    @property
    def versions(self) -> dict[str, Update[T]]:
        """One update per partition key (identical content in two files is one version)."""
        versions: dict[str, Update[T]] = {}
        for update in self.updates:
            versions.setdefault(update.parsed.partition_key, update)
        return versions


def plan_updates(
    files: list[SourceFile] | ListedFiles,
    seen: dict[str, str],
    parse: Callable[[bytes, str], T],
    *,
    check_clashes: bool = True,
) -> ScanPlan[T]:
    """Which files are new or changed since `seen`, parsed; invalid files become errors, not updates.

    Invalid files are left out of the returned cursor so their error is reported again on every tick
    until they are fixed; deleted files drop out of the cursor (their partitions are kept as history).
    With `check_clashes`, a new or changed file whose partition key another file holds with different
    content is an error too; to find that out, a tick with updates also reads and parses the unchanged
    files. Libraries whose keys end in a content hash (constitutions) cannot clash and skip it, so their
    unchanged files are never read (nor, on S3, downloaded). A listing that failed is an error, and the
    cursor entries under it are kept, so its files are not taken for new when it answers again.
    """
    listed = files if isinstance(files, ListedFiles) else ListedFiles(files)
    files = listed.files
    updates: list[Update[T]] = []
    errors: list[str] = list(listed.failed.values())
    cursor: dict[str, str] = {
        source: fp for source, fp in seen.items() if any(source.startswith(u) for u in listed.failed)
    }
    for f in files:
        if seen.get(f.source) == f.fingerprint:
            cursor[f.source] = f.fingerprint
            continue
        try:
            raw = f.read()
            parsed = parse(raw, f.source)
        except Exception as e:  # noqa: BLE001 - every failure of one file is that file's error
            errors.append(str(e))
            continue
        cursor[f.source] = f.fingerprint
        updates.append(Update(f.source, f.fingerprint, parsed, raw))
    if updates and check_clashes:
        updates = _without_clashes(files, updates, cursor, errors, parse)
    return ScanPlan(updates, errors, cursor)


def _without_clashes(
    files: list[SourceFile],
    updates: list[Update[T]],
    cursor: dict[str, str],
    errors: list[str],
    parse: Callable[[bytes, str], T],
) -> list[Update[T]]:
    """The updates minus those whose partition key another file holds with different content.

    A blend's key is its name's slug, so `Mix` and `mix` in two files clash; a constitution's key ends in
    its content hash, so files sharing one say the same thing (one version, no clash). Unchanged files keep
    their key: its partition exists already.
    """
    changed = {u.source: u.parsed for u in updates}
    holders: dict[str, dict[str, str]] = {}  # partition key -> {source: content hash}
    for f in files:
        parsed = changed.get(f.source)
        if parsed is None and f.source in cursor:  # unchanged, and valid when it was seen
            try:
                parsed = parse(f.read(), f.source)
            except Exception:  # noqa: BLE001 - its own error shows once it changes
                continue
        if parsed is not None:
            holders.setdefault(parsed.partition_key, {})[f.source] = parsed.content_hash
    kept = []
    for u in updates:
        held = holders[u.parsed.partition_key]
        if len(set(held.values())) > 1:
            others = ", ".join(s for s in held if s != u.source)
            errors.append(
                f"{u.source}: name: partition key {u.parsed.partition_key!r} is also held by {others} "
                "with different content; give them different names"
            )
            del cursor[u.source]
        else:
            kept.append(u)
    return kept


def load_cursor(cursor: str | None, field: str = "seen") -> dict[str, str]:
    """A sensor cursor's {key: value} map under `field`; a missing, unreadable or foreign cursor reads as
    empty, so the sensor sees everything as new rather than failing every tick."""
    if not cursor:
        return {}
    try:
        data = json.loads(cursor)
    except json.JSONDecodeError:
        return {}
    values = data.get(field) if isinstance(data, dict) else None
    return {str(k): str(v) for k, v in values.items()} if isinstance(values, dict) else {}


def dump_cursor(values: Mapping[str, str], field: str = "seen", version: int = 1) -> str:
    return json.dumps({"v": version, field: dict(values)}, sort_keys=True, separators=(",", ":"))


def read_source(files: list[SourceFile], source: str) -> bytes:
    """The bytes of the listed file `source` (a path or s3:// URI as listed)."""
    for f in files:
        if f.source == source:
            return f.read()
    raise SpecError(source, None, "file not found in the watched library")


def find_by_key(
    files: list[SourceFile], partition_key: str, parse: Callable[[bytes, str], T], where: str
) -> tuple[str, bytes, T]:
    """(source, bytes, parsed) of the file whose current content has this partition key. Invalid files are
    passed over; files holding the key with different content are an error (which one is meant?)."""
    found = []
    for f in files:
        try:
            raw = f.read()
            parsed = parse(raw, f.source)
        except Exception:  # noqa: BLE001 - an invalid or unreadable file is not the one asked for
            continue
        if parsed.partition_key == partition_key:
            found.append((f.source, raw, parsed))
    if len({parsed.content_hash for _, _, parsed in found}) > 1:
        raise SpecError(
            partition_key,
            None,
            f"held by {', '.join(s for s, _, _ in found)} with different content; give them different names",
        )
    if found:
        return found[0]
    raise SpecError(
        partition_key,
        None,
        f"no file in {where} has this content any more (edited or deleted); "
        "earlier materializations of this version stay in storage",
    )


def load_version(
    files: list[SourceFile],
    partition_key: str,
    source: str | None,
    parse: Callable[[bytes, str], T],
    where: str,
) -> tuple[str, bytes, T]:
    """The file of one version: `source` when the sensor named it (its content must still have this key),
    else whichever file has it now."""
    if not source:
        return find_by_key(files, partition_key, parse, where)
    raw = read_source(files, source)
    parsed = parse(raw, source)
    if parsed.partition_key != partition_key:
        raise SpecError(
            source,
            None,
            f"content now has key {parsed.partition_key}, not {partition_key}: the file "
            "changed after the sensor saw it; the sensor starts a run for the new version",
        )
    return source, raw, parsed
