"""Constitutional AI phase 1 on a real Dagster instance, real storage and MLflow, the real embedded SmolLM2:
`revisions` -> `sft_dataset` -> `sft_policy` -> `sft_evals` in one materialization (quick profile, the audit
through the file queue), then the two-phase flow: SFT on stored rows of real human-preferred HH-RLHF replies,
DPO starting from it (the SFT adapter merged and kept in `start/`), and a rerun with identical training that
materializes nothing."""

import json
from pathlib import Path

import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance, MultiPartitionKey, materialize
from mlflow.tracking import MlflowClient

from alignment_dagster.backends import BackendSpec, make_backend
from alignment_dagster.backends.adapter import START, adapter_identity
from alignment_dagster.backends.identity import model_identity
from alignment_dagster.core.settings import Settings
from alignment_dagster.data.pairs import import_pairs
from alignment_dagster.definitions import build_definitions, build_resources
from alignment_dagster.evaluation.side_by_side import SFT_ROW, latest_eval_runs
from alignment_dagster.human.file_queue import FileQueue
from alignment_dagster.human.revision_audit import audit_key
from alignment_dagster.specs.constitution import parse_constitution
from tests.assets.test_training import hh_dataset
from tests.conftest import SHARED_DATA
from tests.revision.test_chains import CONSTITUTION

PHASE_ONE = ["constitution", "revisions", "sft_dataset", "sft_policy", "sft_evals"]
AUDIT_ALL = CONSTITUTION.replace("  min_gain: 0.0\n", "  min_gain: 0.0\n  audit_fraction: 1.0\n")
TWO_PHASE_BLEND = "name: two-phase\nai_weight: 0\nhuman_weight: 1\nstart_from: sft\n"


def setup(tmp_path: Path, **env: str) -> tuple[Settings, str]:
    folder = tmp_path / "constitutions"
    folder.mkdir()
    (folder / "chains.yaml").write_text(AUDIT_ALL)
    blends = tmp_path / "blends"
    blends.mkdir()
    (blends / "two-phase.yaml").write_text(TWO_PHASE_BLEND)
    settings = Settings.from_env(
        {
            "ALIGNMENT_ROOT": str(tmp_path / "root"),
            "ALIGNMENT_CONSTITUTIONS_DIR": str(folder),
            "ALIGNMENT_BLENDS_DIR": str(blends),
            "ALIGNMENT_PROFILE": "quick",
            **env,
        }
    )
    return settings, parse_constitution(AUDIT_ALL, "chains.yaml").partition_key


def run(settings: Settings, instance: DagsterInstance, assets: list[str], partition=None, config=None):
    defs = build_definitions(settings)
    return materialize(
        list(defs.assets),
        selection=[AssetKey(a) for a in assets],
        partition_key=partition,
        instance=instance,
        resources=build_resources(settings),
        run_config=config,
    )


@pytest.mark.slow
def test_phase_one_materializes_end_to_end(tmp_path: Path, smollm2_path: Path) -> None:
    settings, key = setup(tmp_path, ALIGNMENT_LABELLING="file_queue")
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("constitution", [key])
    assert run(settings, instance, ["prompt_pool"]).success
    res = run(settings, instance, PHASE_ONE, key, {"ops": {"revisions": {"config": {"max_new_tokens": 12}}}})
    assert res.success

    rounds = res.output_for_node("revisions")
    meta = res.asset_materializations_for_node("revisions")[0].metadata
    assert (rounds["round"] == 0).sum() == meta["chains"].value == 2  # quick profile: 2 prompts
    assert set(rounds["category"]) == {"helpful", "red-team"}
    assert meta["rounds"].value == (rounds["round"] > 0).sum() >= 2
    assert meta["generation_calls"].value == 2 + 2 * meta["rounds"].value  # first replies, then 2 a round
    assert meta["accepted"].value == rounds["accepted"].sum()
    kept = rounds[rounds["best"]]

    dataset = res.output_for_node("sft_dataset")
    assert sorted(dataset["prompt_id"]) == sorted(kept["prompt_id"])
    assert all(
        list(m)[-1]["content"] == r for m, r in zip(dataset["messages"], dataset["revision"], strict=True)
    )
    data_meta = res.asset_materializations_for_node("sft_dataset")[0].metadata
    # Every kept revision is audited (audit_fraction 1); nobody has answered yet: undecided, the judge's
    # acceptance stands and says so.
    assert data_meta["audit_tasks"].value == len(kept) and data_meta["audit_verdict"].value == "undecided"
    assert dataset["accepted_on"].str.startswith("judge only: human audit undecided").all()
    queue = FileQueue(build_resources(settings)["storage"].open(), f"queue/{audit_key(key)}")
    assert len(queue.tasks()) == len(kept)

    card_meta = res.asset_materializations_for_node("sft_policy")[0].metadata
    evals_meta = res.asset_materializations_for_node("sft_evals")[0].metadata
    assert card_meta["trained"].value == (len(dataset) >= 2)  # min_train_rows 2
    assert evals_meta["trained"].value == card_meta["trained"].value
    print(f"phase 1 (quick): {meta['rounds'].value} rounds, {meta['accepted'].value} accepted")


def sft_rows(n: int) -> pd.DataFrame:
    """Real human-preferred replies (HH-RLHF `chosen`) in sft_dataset's format, as stand-ins for accepted
    revisions: the training path must not depend on how many revisions a 135M judge accepts."""
    ps = import_pairs([str(SHARED_DATA)], lambda u: Path(u).read_bytes(), limit=n)
    rows = []
    for pair, label in zip(ps.pairs.itertuples(), ps.labels["label"], strict=True):
        chosen = pair.response_a if label == "A" else pair.response_b
        rows.append(
            {
                "prompt_id": pair.prompt_id,
                "category": "red-team",
                "messages": [
                    {"role": "user", "content": pair.prompt},
                    {"role": "assistant", "content": chosen},
                ],
                "prompt": pair.prompt,
                "revision": chosen,
                "original": pair.response_b if label == "A" else pair.response_a,
                "principle_ids": ["harm"],
                "best_round": 1,
                "p_revision": 0.7,
                "confidence": 0.4,
                "judge_label": "A",
                "accepted_on": "judge only: human audit undecided",
            }
        )
    return pd.DataFrame(rows)


@pytest.mark.slow
def test_dpo_starts_from_the_sft_policy(tmp_path: Path, smollm2_path: Path) -> None:
    settings, key = setup(tmp_path)
    root = Path(settings.root)
    # The two datasets as their assets store them: the training assets read them through the IO manager.
    for asset, partition, frame in (
        ("sft_dataset", [key], sft_rows(8)),
        ("preference_dataset", [key, "two-phase"], hh_dataset(16)),
    ):
        (root / asset / Path(*partition)).mkdir(parents=True)
        frame.to_parquet(root / asset / Path(*partition) / "data.parquet", index=False)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("constitution", [key])
    instance.add_dynamic_partitions("blend", ["two-phase"])
    assert run(settings, instance, ["prompt_pool"]).success
    small = {"ops": {"sft_evals": {"config": {"max_prompts": 2, "max_new_tokens": 8}}}}
    sft = run(settings, instance, ["constitution", "sft_policy", "sft_evals"], key, small)
    assert sft.success
    sft_dir = root / "sft_policy" / key / "model"
    sft_meta = sft.asset_materializations_for_node("sft_policy")[0].metadata
    assert sft_meta["trained"].value and sft_meta["registered_model"].value == f"models:/sft-{key}/1"
    assert {"adapter_model.safetensors", "adapter_config.json", "alignment.json"} <= {
        p.name for p in sft_dir.iterdir()
    }

    pair = MultiPartitionKey({"constitution": key, "blend": "two-phase"})
    config = {"ops": {"dpo_policy": {"config": {"max_steps": 2, "max_length": 128, "eval_limit": 2}}}}
    dpo = run(settings, instance, ["dpo_policy"], pair, config)
    assert dpo.success
    dpo_dir = root / "dpo_policy" / key / "two-phase" / "model"
    card = json.loads((dpo_dir / "alignment.json").read_text())
    assert card["trained"] and card["start_from"] == "sft" and card["base_model"] is None
    assert card["sft_policy"] == f"models:/sft-{key}/1"
    assert {p.name for p in (dpo_dir / START).iterdir()} == {
        "adapter_config.json",
        "adapter_model.safetensors",
    }
    base_identity = model_identity("transformers", None)[1]
    assert card["base_identity"] == adapter_identity(base_identity, str(sft_dir))
    # The folder loads alone: the base, the SFT adapter from start/ merged, then the DPO adapter.
    policy = make_backend(BackendSpec(adapter=str(dpo_dir)))
    assert policy.identity not in (base_identity, adapter_identity(base_identity, str(sft_dir)))
    assert len(policy.generate([[{"role": "user", "content": "Hi"}]], n=1)[0][0]) > 0

    # Identical training (same rows, config and SFT base): nothing to materialize, no second model version.
    again = run(settings, instance, ["dpo_policy"], pair, config)
    assert again.success and again.asset_materializations_for_node("dpo_policy") == []
    client = MlflowClient(settings.mlflow_uri, registry_uri=settings.mlflow_uri)
    versions = client.search_model_versions(f"name = 'policy-{key}-two-phase'")
    assert len(versions) == 1

    table = latest_eval_runs(client, client.get_experiment_by_name("alignment-dagster").experiment_id)
    row = table[table["blend"] == SFT_ROW].iloc[0]
    assert (
        row["constitution"] == key
        and row["trained"] == "true"
        and row["policy model"] == f"models:/sft-{key}/1"
    )
    assert 0.0 <= row["judge.win_rate"] <= 1.0
