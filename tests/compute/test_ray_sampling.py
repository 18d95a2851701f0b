"""Sampling as a Ray job (Ray Data actors running the same transformers backend, 2 workers): response_pairs
through dagster-ray's Pipes client gives the in-process replies in the same cache, and a trained policy's
folder (what evals samples from) reaches the workers through storage."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from dagster import DagsterInstance, materialize

from alignment_dagster.assets.prompt_pool import prompt_pool
from alignment_dagster.assets.response_pairs import response_pairs
from alignment_dagster.backends import BackendSpec, Sampling, make_backend
from alignment_dagster.compute.cluster_backend import ClusterBackend
from alignment_dagster.compute.job_io import storage_extras, submit_without_pipes
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


@pytest.mark.slow
def test_a_policy_folder_reaches_the_workers_through_storage(
    tmp_path: Path, ray_cluster, smollm2_path: Path
) -> None:
    """evals' policy (a LoRA folder on this machine) is stored once in the run's storage and fetched by each
    worker: the replies on Ray are the policy's, not the base's, and equal the in-process policy's."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapter = tmp_path / "policy"
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)  # random: it shows
    get_peft_model(AutoModelForCausalLM.from_pretrained(smollm2_path), lora).save_pretrained(adapter)
    spec = BackendSpec(adapter=str(adapter))
    store = LocalStorage(tmp_path / "root")
    job = {**storage_extras(store), "workers": 2, "cpus_per_worker": 1.0, "gpus_per_worker": 0}
    on_ray = ClusterBackend(spec, submit_without_pipes(ray_cluster.address, tmp_path), store, job)
    local = make_backend(spec)
    assert on_ray.identity == local.identity
    assert store.dir_exists(on_ray.job["adapter_key"])
    prompts = pd.DataFrame(
        {"prompt_id": ["p1", "p2", "p3", "p4"], "prompt": ["Hi!", "Name a fruit.", "Say yes.", "Count to 3."]}
    )
    sampling = Sampling(temperature=0.0, max_new_tokens=TOKENS)
    got, _ = sample_responses(
        prompts, on_ray, sampling, 1, generation_cache(store, on_ray.identity), shard_size=SHARD
    )
    want, _ = sample_responses(
        prompts,
        local,
        sampling,
        1,
        generation_cache(LocalStorage(tmp_path / "local"), local.identity),
        shard_size=SHARD,
    )
    base, _ = sample_responses(
        prompts,
        make_backend(BackendSpec()),
        sampling,
        1,
        generation_cache(LocalStorage(tmp_path / "base"), "b"),
        shard_size=SHARD,
    )
    assert got == want and got != base
    assert on_ray.reports[-1]["model_calls"] == len(prompts) and on_ray.reports[-1]["shards"] == 2
