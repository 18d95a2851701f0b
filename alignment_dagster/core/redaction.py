"""Keeping secrets out of what gets recorded: MLflow params and tags, Dagster metadata, identities, logs.

Secrets come from environment variables the configuration only names; what can still carry one is a value
whose key names a secret, or a URL with credentials in it (`https://user:pw@host/v1`, `postgresql://u:pw@db/x`,
`...?api_key=...`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

SECRET_KEY = re.compile(r"(secret|token|password|passwd|api[_-]?key|access[_-]?key|credential|auth)", re.I)
REDACTED = "<redacted>"
_USERINFO = re.compile(r"(?<=://)[^/@\s?#]+@")  # user:password@ between the scheme and the host
_QUERY_SECRET = re.compile(r"([?&][^=&#\s]*(?:" + SECRET_KEY.pattern + r")[^=&#\s]*=)[^&#\s]*", re.I)


def redact_url(text: str) -> str:
    """`text` with the credentials of any URL in it replaced: user info, and query values whose name names
    a secret. Everything else (scheme, host, port, path) stays, so the endpoint is still recognisable."""
    return _QUERY_SECRET.sub(lambda m: m.group(1) + REDACTED, _USERINFO.sub(REDACTED + "@", text))


def redact(params: Mapping[str, Any]) -> dict[str, Any]:
    """Values whose key names a secret dropped, and URL credentials removed from strings, recursively."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        if SECRET_KEY.search(str(k)):
            out[k] = REDACTED
        elif isinstance(v, Mapping):
            out[k] = redact(v)
        elif isinstance(v, str):
            out[k] = redact_url(v)
        else:
            out[k] = v
    return out
