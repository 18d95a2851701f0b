"""Bounds on what a remote server can make this process do: how much of a response is read, and what of an
error body is kept (a short excerpt, redacted: a gateway that echoes the request headers would otherwise put
the API key into the logs). Timeouts live with each client; docs/architecture.md lists them per dependency.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from alignment_dagster.core.redaction import redact_text
from alignment_dagster.core.storage import size_text

MAX_RESPONSE_BYTES = 64 * 1024 * 1024  # a page of Label Studio tasks, a batch of completions: far below
MAX_ERROR_BYTES = 4096
ERROR_EXCERPT_CHARS = 200


class ResponseTooLarge(ValueError):
    """A server answered with more than the limit; the rest was not read."""


def _declared_length(headers: object, limit: int) -> None:
    length = getattr(headers, "get", lambda _: None)("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise ResponseTooLarge(f"response of {length} bytes, over the {size_text(limit)} limit")


def _collect(chunks: Iterator[bytes] | list[bytes], limit: int, truncate: bool) -> bytes:
    out = bytearray()
    for chunk in chunks:
        out += chunk
        if len(out) > limit:
            if truncate:
                return bytes(out[:limit])
            raise ResponseTooLarge(f"response over the {size_text(limit)} limit")
    return bytes(out)


def read_body(response: object, limit: int = MAX_RESPONSE_BYTES, *, truncate: bool = False) -> bytes:
    """The body of a streamed httpx response, at most `limit` bytes: ResponseTooLarge beyond it (checked on
    Content-Length first), or, with `truncate`, the first `limit` bytes."""
    if not truncate:
        _declared_length(response.headers, limit)  # type: ignore[attr-defined]
    return _collect(_until(response.iter_bytes(), limit), limit, truncate)  # type: ignore[attr-defined]


async def aread_body(response: object, limit: int = MAX_RESPONSE_BYTES, *, truncate: bool = False) -> bytes:
    """`read_body` for an async httpx response."""
    if not truncate:
        _declared_length(response.headers, limit)  # type: ignore[attr-defined]
    chunks: list[bytes] = []
    size = 0
    async for chunk in _auntil(response.aiter_bytes(), limit):  # type: ignore[attr-defined]
        chunks.append(chunk)
        size += len(chunk)
    return _collect(chunks, limit, truncate) if size else b""


def _until(chunks: Iterator[bytes], limit: int) -> Iterator[bytes]:
    """The chunks up to the first that passes `limit` (so reading stops there)."""
    size = 0
    for chunk in chunks:
        yield chunk
        size += len(chunk)
        if size > limit:
            return


async def _auntil(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    size = 0
    async for chunk in chunks:
        yield chunk
        size += len(chunk)
        if size > limit:
            return


def error_excerpt(body: bytes) -> str:
    """What of a server's error body goes into an error message: one line, at most 200 characters,
    redacted (known secrets, Authorization values, URL credentials)."""
    text = " ".join(body.decode("utf-8", errors="replace").split())
    if "<html" in text[:500].lower():
        return "(an HTML page)"
    clean = redact_text(text)
    return clean[:ERROR_EXCERPT_CHARS] + ("..." if len(clean) > ERROR_EXCERPT_CHARS else "")
