"""response_pairs' sampling as a Ray job (Ray Data actors running the same transformers backend, 2 workers)
through dagster-ray's Pipes client: the same replies as in-process for the same prompts, in the same cache."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import DagsterInstance, materialize

from alignment_dagster.assets.prompt_pool import prompt_pool
from alignment_dagster.assets.response_pairs import response_pairs
from alignment_dagster.backends import BackendSpec, Sampling, make_backend
from alignment_dagster.core.settings import Settings
from alignment_dagster.core.storage import LocalStorage
from alignment_dagster.core.values import read_value, value_prefix
from alignment_dagster.data.sampling import generation_cache, sample_responses
from alignment_dagster.definitions import build_resources

PROMPTS, TOKENS, SHARD = 6, 12, 2


@pytest.mark.slow
def test_sampling_on_ray_gives_the_in_process_replies(tmp_path: Path, ray_cluster) -> None:
    root = tmp_path / "root"
    settings = Settings.from_env(
        {
            "ALIGNMENT_ROOT": str(root),
            "ALIGNMENT_IMPORT_PAIRS": "",
            "ALIGNMENT_COMPUTE": "ray",
            "ALIGNMENT_RAY_ADDRESS": ray_cluster.address,
        }
    )
    config = {
        "ops": {
            "response_pairs": {
                "config": {"max_prompts": PROMPTS, "max_new_tokens": TOKENS, "shard_size": SHARD, "k": 2}
            }
        }
    }
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [prompt_pool, response_pairs],
            resources=build_resources(settings),
            instance=instance,
            run_config=config,
        )
    meta = {
        k: v.value for k, v in result.asset_materializations_for_node("response_pairs")[0].metadata.items()
    }
    assert meta["compute"] == "ray" and meta["ray_shards"] == PROMPTS // SHARD
    assert meta["ray_model_calls"] == PROMPTS and meta["ray_job_ids"].startswith("pipes-")
    store = LocalStorage(root)
    pairs = read_value(store, value_prefix(["response_pairs"], []))
    pool = read_value(store, value_prefix(["prompt_pool"], []))
    train = pool[pool["split"] == "train"].head(PROMPTS)
    assert set(pairs["prompt_id"]) <= set(train["prompt_id"]) and len(pairs)

    # In-process, same prompts, sampling and shards, its own cache: the same replies under the same keys.
    backend = make_backend(BackendSpec())
    sampling = Sampling(temperature=0.9, top_p=0.95, max_new_tokens=TOKENS, seed=0)
    local_store = LocalStorage(tmp_path / "local")
    local, counts = sample_responses(
        train, backend, sampling, 2, generation_cache(local_store, backend.identity), shard_size=SHARD
    )
    assert counts == {"cached": 0, "sampled": PROMPTS}
    on_ray, _ = sample_responses(
        train, backend, sampling, 2, generation_cache(store, backend.identity), shard_size=SHARD
    )
    assert on_ray == local  # read from the Ray job's cache: nothing left to sample
    assert backend.stats.generate_calls == PROMPTS // SHARD
