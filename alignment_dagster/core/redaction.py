"""The one redaction point for everything that leaves the process: logs, errors, Dagster metadata and run
storage, MLflow params and tags, identities.

Secrets come from environment variables the configuration only names. What can still carry one is a value
whose key names a secret, a URL with credentials in it (`https://user:pw@host/v1`, `postgresql://u:pw@db/x`,
`...?api_key=...`), an `Authorization` value a server echoes back, or the text of a library's exception.
`redact_text` removes all of these: URL credentials, Authorization values, every secret this process
registered when it read one (`register_secret`) and the values of secret-named environment variables.
`install_log_redaction` passes every log record through it; `redacted_errors` does the same for exceptions
from libraries that put their configuration into messages (MLflow puts its tracking URI there).
"""

from __future__ import annotations

import logging
import os
import re
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

SECRET_KEY = re.compile(r"(secret|token|password|passwd|api[_-]?key|access[_-]?key|credential|auth)", re.I)
REDACTED = "<redacted>"
MIN_SECRET_CHARS = 6  # shorter values ("true", "1") are settings, and replacing them would garble every text
_USERINFO = re.compile(r"(?<=://)[^/@\s?#]+@")  # user:password@ between the scheme and the host
_QUERY_SECRET = re.compile(r"([?&][^=&#\s]*(?:" + SECRET_KEY.pattern + r")[^=&#\s]*=)[^&#\s]*", re.I)
# An Authorization header's value, as a gateway echoing the request headers writes it.
_AUTH_HEADER = re.compile(r"""(authorization["']?\s*[:=]\s*["']?)[^"'\r\n,}]+""", re.I)
_AUTH_SCHEME = re.compile(r"\b((?i:bearer)|Basic|Token)\s+[A-Za-z0-9._~+/=-]{12,}")
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
_SECRETS: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a secret this process read (an API key, a token): `redact_text` removes it wherever it turns
    up, also where no pattern would find it (a server echoing it inside its error body)."""
    if value and len(value) >= MIN_SECRET_CHARS:
        _SECRETS.add(value)


def _known_secrets() -> list[str]:
    # Secret-named variables (AWS_SECRET_ACCESS_KEY, LABEL_STUDIO_API_KEY, MLFLOW_TRACKING_PASSWORD, ...); a
    # value that is itself a variable name (ALIGNMENT_JUDGE_API_KEY_ENV=MY_KEY) only names one.
    env = [
        v
        for k, v in os.environ.items()
        if SECRET_KEY.search(k) and len(v) >= MIN_SECRET_CHARS and not _ENV_NAME.fullmatch(v)
    ]
    return sorted({*_SECRETS, *env}, key=len, reverse=True)


def redact_url(text: str) -> str:
    """`text` with the credentials of any URL in it replaced: user info, and query values whose name names
    a secret. Everything else (scheme, host, port, path) stays, so the endpoint is still recognisable."""
    return _QUERY_SECRET.sub(lambda m: m.group(1) + REDACTED, _USERINFO.sub(REDACTED + "@", text))


def credentials_in(url: str) -> bool:
    """Whether a URL carries credentials (user info, or a secret-named query value)."""
    return redact_url(url) != url


def redact_text(text: str) -> str:
    """`text` without URL credentials, Authorization values, registered secrets or the values of
    secret-named environment variables."""
    text = _AUTH_SCHEME.sub(lambda m: f"{m.group(1)} {REDACTED}", redact_url(text))
    text = _AUTH_HEADER.sub(lambda m: m.group(1) + REDACTED, text)
    for secret in _known_secrets():
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def redact(params: Mapping[str, Any]) -> dict[str, Any]:
    """Values whose key names a secret dropped, and secrets removed from strings, recursively."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        if SECRET_KEY.search(str(k)):
            out[k] = REDACTED
        elif isinstance(v, Mapping):
            out[k] = redact(v)
        elif isinstance(v, str):
            out[k] = redact_text(v)
        else:
            out[k] = v
    return out


class RedactedError(RuntimeError):
    """A library's error whose text carried a secret, raised again without it (and without the original
    chain, which carries the same text)."""


def _error_text(error: BaseException) -> str:
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


@contextmanager
def redacted_errors(what: str) -> Iterator[None]:
    """Re-raise an exception whose message or chain holds a secret as a `RedactedError` naming `what`;
    others pass unchanged (their type still matters to callers)."""
    try:
        yield
    except Exception as e:
        full = _error_text(e)
        if redact_text(full) == full:
            raise
        raise RedactedError(redact_text(f"{what}: {type(e).__name__}: {e}")) from None


def install_log_redaction() -> None:
    """Pass every log record this process makes through `redact_text`, its traceback included
    (idempotent). Records are redacted where they are made, so every handler (console, Dagster's event
    log, compute logs) gets the clean text."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "redacting", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logging's to report
            return record
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact_text(_error_text(record.exc_info[1]).rstrip("\n"))
        return record

    factory.redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
