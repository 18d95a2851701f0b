"""The model backend resource is derived from `BackendSpec`: every setting, with its type, default, bounds and
help text, is a resource field, so each can be set from the Dagster launchpad (run config)."""

import pytest
from dagster import DagsterInstance, asset, materialize
from pydantic import ValidationError

from alignment_dagster.backends import BackendSpec
from alignment_dagster.resources.models import ModelBackendResource


def test_resource_fields_are_the_spec_fields() -> None:
    spec, resource = BackendSpec.model_fields, ModelBackendResource.model_fields
    assert list(resource) == list(spec)
    for name, field in spec.items():
        got = resource[name]
        assert (got.annotation, got.default, got.description, got.metadata) == (
            field.annotation,
            field.default,
            field.description,
            field.metadata,
        ), name
    with pytest.raises(ValidationError):
        ModelBackendResource(batch_size=0)  # the spec's bound holds on the resource too


def test_every_spec_setting_can_be_set_from_run_config() -> None:
    seen: dict[str, BackendSpec] = {}

    @asset
    def probe(judge_model: ModelBackendResource) -> None:
        seen["spec"] = judge_model.spec()

    # A non-default value for every field, as a launchpad user would type it.
    values = {
        "kind": "openai",
        "model": "m",
        "adapter": "/policy",
        "device": "cpu",
        "dtype": "float32",
        "batch_size": 3,
        "cpu_threads": 1,
        "share_prefixes": False,
        "base_url": "http://127.0.0.1:9/v1",
        "served_model": "served",
        "api_key_env": "MY_KEY",
        "max_concurrency": 2,
        "timeout_s": 5.0,
        "deadline_s": 20.0,
        "max_retries": 1,
        "top_logprobs": 5,
        "exact_choice_logprobs": False,
    }
    assert set(values) == set(BackendSpec.model_fields)
    assert all(values[k] != f.default for k, f in BackendSpec.model_fields.items())
    result = materialize(
        [probe],
        resources={"judge_model": ModelBackendResource()},
        instance=DagsterInstance.ephemeral(),
        run_config={"resources": {"judge_model": {"config": values}}},
    )
    assert result.success and seen["spec"] == BackendSpec(**values)
