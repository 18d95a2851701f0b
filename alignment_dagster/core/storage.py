"""Object storage under one base URI: a local folder (default) or `s3://bucket/prefix`.

Keys are relative POSIX paths ("prompt_pool/data.parquet"). Every write is atomic: local files
are written to a temporary name and renamed; S3 PUTs are atomic per object, and directories
are published by writing a manifest last, so a reader never sees half of a model folder.

Model folders are content-addressed (`put_dir(..., content_addressed=True)`): each file is stored once as
`blobs/sha256/<ab>/<digest>`, and the folder's manifest names the digest of every file. Locally the folder's
files are hard links to those blobs (loaders see an ordinary folder, the bytes are on disk once); on S3 the
folder is its manifest alone. Identical weights kept by several partitions, the model cache and MLflow model
versions (which record the digests, `training.artifacts`) are therefore one copy. Blobs are never deleted by
the pipeline: a replaced partition's old weights may still be a registered MLflow version.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib.parse import urlparse

MANIFEST = "_MANIFEST.json"
BLOBS = "blobs/sha256"
MAX_INPUT_BYTES = 256 * 1024 * 1024  # one input file (prompts, pairs, labels) as read; gzip is capped apart


class TooLargeError(ValueError):
    """An input over its size limit; raised before more than the limit is read."""


def size_text(n: int) -> str:
    """A byte count as people write limits: 1 MiB, 64 KiB, 100 bytes."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


def _check_rel(key: str) -> str:
    p = PurePosixPath(key)
    if p.is_absolute() or any(part in ("..", "") for part in p.parts) or not p.parts:
        raise ValueError(f"unsafe storage key {key!r}")
    return str(p)


class Storage(Protocol):
    uri: str

    def read_bytes(self, key: str) -> bytes: ...
    def write_bytes(self, key: str, data: bytes) -> None: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def put_dir(self, key: str, local_dir: Path, content_addressed: bool = False) -> None: ...
    def get_dir(self, key: str, local_dir: Path) -> Path: ...
    def put_blobs(self, local_dir: Path) -> dict[str, str]: ...
    def get_blob(self, digest: str, dest: Path) -> None: ...
    def dir_exists(self, key: str) -> bool: ...
    def local_path(self, key: str) -> Path | None: ...
    def url(self, key: str) -> str: ...


def blob_key(digest: str) -> str:
    """Where the file whose SHA-256 is `digest` is stored (two hex digits of fan-out per folder)."""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"not a SHA-256 hex digest: {digest!r}")
    return f"{BLOBS}/{digest[:2]}/{digest}"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def tree_sha256(digests: dict[str, str]) -> str:
    """One digest for a folder: its relative paths and their files' digests."""
    return hashlib.sha256("".join(f"{rel}\0{d}\n" for rel, d in sorted(digests.items())).encode()).hexdigest()


def _dir_files(local_dir: Path) -> list[str]:
    files = sorted(p.relative_to(local_dir).as_posix() for p in local_dir.rglob("*") if p.is_file())
    return [f for f in files if f != MANIFEST]


def _dir_manifest(local_dir: Path, digests: dict[str, str] | None = None) -> dict[str, Any]:
    files = _dir_files(local_dir)
    manifest: dict[str, Any] = {"files": files, "sizes": {f: (local_dir / f).stat().st_size for f in files}}
    if digests is not None:
        manifest["sha256"] = digests
    return manifest


class LocalStorage:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _check_rel(key)

    def url(self, key: str) -> str:
        return str(self._path(key))

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def read_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if base.is_file():
            return [prefix]
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix)
        if path.is_dir():
            # Manifests first: a deletion cut short must not leave a directory that still reads as complete.
            for manifest in path.rglob(MANIFEST):
                manifest.unlink()
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

    def dir_exists(self, key: str) -> bool:
        return (self._path(key) / MANIFEST).is_file()

    def put_blobs(self, local_dir: Path) -> dict[str, str]:
        """Store every file of `local_dir` under its SHA-256 (once); {relative path: digest}."""
        digests = {}
        for rel in _dir_files(local_dir):
            src = local_dir / rel
            digest = file_sha256(src)
            blob = self._path(blob_key(digest))
            if not blob.is_file():
                self._write_blob(src, blob)
            digests[rel] = digest
        return digests

    def _write_blob(self, src: Path, blob: Path) -> None:
        blob.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=blob.parent, prefix=".blob.", suffix=".tmp")
        try:
            h = hashlib.sha256()
            with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            if h.hexdigest() != blob.name:
                raise RuntimeError(f"{src} changed while it was being stored")
            # A link, not a rename: the first writer of a digest wins and every folder shares its inode.
            try:
                os.link(tmp, blob)
            except FileExistsError:
                pass  # stored meanwhile by another process: the same bytes
            except OSError:  # a file system without hard links
                os.replace(tmp, blob)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def get_blob(self, digest: str, dest: Path) -> None:
        """A private copy of a blob (never a link: the caller may write to it)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._path(blob_key(digest)), dest)

    def _link_tree(self, digests: dict[str, str], staging: Path) -> None:
        for rel, digest in digests.items():
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(self._path(blob_key(digest)), target)
            except OSError:  # no hard links here (another file system, a FUSE mount): a plain copy
                shutil.copyfile(self._path(blob_key(digest)), target)

    def put_dir(self, key: str, local_dir: Path, content_addressed: bool = False) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.tmp"
        if content_addressed:
            digests = self.put_blobs(local_dir)
            staging.mkdir()
            self._link_tree(digests, staging)
            manifest = _dir_manifest(staging, digests)
        else:
            shutil.copytree(local_dir, staging)
            manifest = _dir_manifest(staging)
        (staging / MANIFEST).write_text(json.dumps(manifest))
        # Swap in the new folder with two renames; the old one is removed only after the swap.
        old = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.old"
        if dest.exists():
            os.replace(dest, old)
        os.replace(staging, dest)
        shutil.rmtree(old, ignore_errors=True)

    def get_dir(self, key: str, local_dir: Path | None = None) -> Path:
        src = self._path(key)
        if not (src / MANIFEST).is_file():
            raise FileNotFoundError(f"no complete directory at {src} (missing {MANIFEST})")
        if local_dir is None:
            return src
        shutil.copytree(src, local_dir, dirs_exist_ok=True)
        return local_dir


class S3Storage:
    def __init__(self, bucket: str, prefix: str, client_factory: Callable[[], Any]):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client_factory = client_factory
        self._client = None
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def _key(self, key: str) -> str:
        key = _check_rel(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def local_path(self, key: str) -> Path | None:
        return None

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(self.url(key)) from None

    def write_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def _iter_keys(self, prefix: str) -> Iterator[str]:
        # Prefixes are folders: "a/b" must not match "a/bc".
        full = self._key(prefix) + "/" if prefix else (self.prefix + "/" if self.prefix else "")
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            for obj in page.get("Contents", []):
                yield obj["Key"][strip:]

    def list(self, prefix: str = "") -> list[str]:
        return sorted(self._iter_keys(prefix))

    def delete_prefix(self, prefix: str) -> None:
        keys = [self._key(k) for k in self._iter_keys(prefix)]
        manifests = [k for k in keys if k.endswith(f"/{MANIFEST}")]
        rest = [k for k in keys if not k.endswith(f"/{MANIFEST}")]
        for batch in (
            manifests,
            rest,
        ):  # manifests first: a deletion cut short leaves no directory reading as complete
            for i in range(0, len(batch), 1000):
                self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch[i : i + 1000]]}
                )

    def dir_exists(self, key: str) -> bool:
        return self.exists(f"{key}/{MANIFEST}")

    def put_blobs(self, local_dir: Path) -> dict[str, str]:
        """Upload every file of `local_dir` not yet stored under its SHA-256; {relative path: digest}."""
        digests = {rel: file_sha256(local_dir / rel) for rel in _dir_files(local_dir)}
        for rel, digest in digests.items():
            # One PUT (or a multipart upload, completed at once) per blob: never half an object.
            if not self.exists(blob_key(digest)):
                self.client.upload_file(str(local_dir / rel), self.bucket, self._key(blob_key(digest)))
        return digests

    def get_blob(self, digest: str, dest: Path) -> None:
        from botocore.exceptions import ClientError

        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.download_file(self.bucket, self._key(blob_key(digest)), str(dest))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(self.url(blob_key(digest))) from None
            raise

    def put_dir(self, key: str, local_dir: Path, content_addressed: bool = False) -> None:
        # Objects go under a fresh version folder (or are blobs already) and the manifest naming them is
        # written last, so readers see either the old folder or the new one, never a mix; an interrupted
        # upload leaves only an unreferenced version folder or blobs.
        old_version = None
        if self.exists(f"{key}/{MANIFEST}"):
            old_version = json.loads(self.read_bytes(f"{key}/{MANIFEST}")).get("version")
        if content_addressed:
            manifest = _dir_manifest(local_dir, self.put_blobs(local_dir))
        else:
            manifest = _dir_manifest(local_dir)
            manifest["version"] = uuid.uuid4().hex
            for rel in manifest["files"]:
                self.client.upload_file(
                    str(local_dir / rel), self.bucket, self._key(f"{key}/{manifest['version']}/{rel}")
                )
        self.write_bytes(f"{key}/{MANIFEST}", json.dumps(manifest).encode())
        if old_version:
            self.delete_prefix(f"{key}/{old_version}")

    def get_dir(self, key: str, local_dir: Path | None = None) -> Path:
        try:
            manifest = json.loads(self.read_bytes(f"{key}/{MANIFEST}"))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no complete directory at {self.url(key)} (missing {MANIFEST})"
            ) from None
        if local_dir is None:
            local_dir = Path(tempfile.mkdtemp(prefix="alignment-dir-"))
        for rel in manifest["files"]:
            dest = local_dir / rel
            if "sha256" in manifest:
                self.get_blob(manifest["sha256"][rel], dest)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            self.client.download_file(self.bucket, self._key(f"{key}/{manifest['version']}/{rel}"), str(dest))
        return local_dir


def parse_s3_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def open_storage(base_uri: str, s3_client_factory: Callable[[], Any] | None = None) -> Storage:
    """Storage for a local path or an `s3://bucket/prefix` URI."""
    if base_uri.startswith("s3://"):
        if s3_client_factory is None:
            raise ValueError(f"{base_uri}: an S3 client is needed for s3:// storage")
        bucket, prefix = parse_s3_uri(base_uri)
        return S3Storage(bucket, prefix, s3_client_factory)
    return LocalStorage(base_uri)


def read_local_file(path: str | Path, max_bytes: int = MAX_INPUT_BYTES) -> bytes:
    """A regular file's bytes, refusing more than `max_bytes`. FIFOs, devices and sockets are refused before
    anything is read (a FIFO would block, /dev/zero never ends): the file is opened non-blocking and checked
    on its descriptor, so a file swapped after a look at its name is caught too. OSError for a missing or
    unreadable path, TooLargeError over the limit."""
    fd = os.open(Path(path).expanduser(), os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a FIFO, device or socket)")
        if info.st_size > max_bytes:
            raise TooLargeError(f"file is {info.st_size} bytes, over the {size_text(max_bytes)} limit")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew while being read
        raise TooLargeError(f"file is over the {size_text(max_bytes)} limit")
    return data


def read_s3_object(client: Any, bucket: str, key: str, max_bytes: int = MAX_INPUT_BYTES) -> bytes:
    """An S3 object's bytes, refusing more than `max_bytes` (checked on the object's length before reading
    its body, and on the body as read); FileNotFoundError when there is no such key."""
    try:
        obj = client.get_object(Bucket=bucket, Key=key)
    except client.exceptions.NoSuchKey:
        raise FileNotFoundError(f"s3://{bucket}/{key}") from None
    body = obj["Body"]
    try:
        if int(obj.get("ContentLength") or 0) > max_bytes:
            raise TooLargeError(
                f"object is {obj['ContentLength']} bytes, over the {size_text(max_bytes)} limit"
            )
        data = body.read(max_bytes + 1)
    finally:
        body.close()
    if len(data) > max_bytes:
        raise TooLargeError(f"object is over the {size_text(max_bytes)} limit")
    return data


def read_uri(
    uri: str, s3_client_factory: Callable[[], Any] | None = None, max_bytes: int = MAX_INPUT_BYTES
) -> bytes:
    """Read one input file given as a local path or `s3://bucket/key`, at most `max_bytes` of it (see
    `read_local_file`, `read_s3_object`)."""
    if uri.startswith("s3://"):
        if s3_client_factory is None:
            raise ValueError(f"{uri}: an S3 client is needed to read s3:// sources")
        bucket, key = parse_s3_uri(uri)
        return read_s3_object(s3_client_factory(), bucket, key, max_bytes)
    return read_local_file(uri, max_bytes)
