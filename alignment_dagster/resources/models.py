"""Model backend resources: which model serves policy sampling and which serves judging.

`ModelBackendResource` is derived from `BackendSpec`: every spec field (type, default, bounds, help text) is a
resource field, so each is settable in the Dagster launchpad and none is declared twice.
"""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import create_model

from alignment_dagster.backends import Backend, BackendSpec, make_backend

_LOADED: dict[str, Backend] = {}  # one loaded model per spec per process, shared by the steps in it


class _BackendResource(ConfigurableResource):
    """A backend spec (see `BackendSpec`); the API key is named by `api_key_env`, never stored here."""

    def spec(self) -> BackendSpec:
        return BackendSpec(**{name: getattr(self, name) for name in BackendSpec.model_fields})

    def backend(self) -> Backend:
        spec = self.spec()
        key = spec.model_dump_json()
        if key not in _LOADED:
            _LOADED[key] = make_backend(spec)
        return _LOADED[key]


ModelBackendResource = create_model(
    "ModelBackendResource",
    __base__=_BackendResource,
    __module__=__name__,
    __doc__=_BackendResource.__doc__,
    **{name: (field.annotation, field) for name, field in BackendSpec.model_fields.items()},
)
