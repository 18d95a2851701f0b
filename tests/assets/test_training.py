"""reward_model and dpo_policy on a real Dagster instance, real storage and MLflow (SQLite registry), real
MiniLM / SmolLM2: models are registered, reload identically from storage and from MLflow, skip cleanly on a
too-small blend, and a SIGKILLed policy or reward-model training resumes from its last checkpoint in
storage."""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance, MultiPartitionKey, materialize
from mlflow.tracking import MlflowClient

from alignment_dagster.core.settings import Settings
from alignment_dagster.core.storage import LocalStorage
from alignment_dagster.data.blending import blend_preferences, known_rows
from alignment_dagster.data.pairs import HELDOUT, import_pairs
from alignment_dagster.definitions import build_definitions, build_resources
from alignment_dagster.resources.storage_io import partition_path
from alignment_dagster.specs.blend import Blend
from alignment_dagster.training.artifacts import (
    ModelNotTrained,
    download_registered,
    load_policy,
    load_reward_scorer,
    read_model_card,
)
from alignment_dagster.training.policy_eval import reply_logprobs
from alignment_dagster.training.stages import heldout_hh_pairs
from tests.conftest import REPO, SHARED_DATA, write_known_labels

CONSTITUTION = "small-0123abcd"
TRAINING = [AssetKey("reward_model"), AssetKey("dpo_policy")]
TRAINING_NODES = ("reward_model", "dpo_policy")


def run_config(dpo: dict | None = None, reward: dict | None = None) -> dict:
    return {
        "ops": {
            "reward_model": {
                "config": {"max_steps": 8, "max_length": 96, "heldout_limit": 30, **(reward or {})}
            },
            "dpo_policy": {
                "config": {"max_steps": 3, "save_steps": 2, "max_length": 128, "eval_limit": 4, **(dpo or {})}
            },
        }
    }


def hh_dataset(n: int) -> pd.DataFrame:
    """Real human-labelled HH-RLHF pairs as a preference_dataset (split by prompt, as the pipeline does)."""
    ps = import_pairs([str(SHARED_DATA)], lambda u: Path(u).read_bytes(), limit=n)
    human = ps.labels.rename(columns={"label": "choice"})
    return blend_preferences(
        ps.pairs, None, human, Blend(name="human-only", ai_weight=0, eval_fraction=0.25)
    ).dataset


def setup_partition(tmp_path: Path, blend: str, dataset: pd.DataFrame):
    settings = Settings.from_env(
        {"ALIGNMENT_ROOT": str(tmp_path / "root"), "ALIGNMENT_IMPORT_PAIRS": str(SHARED_DATA)}
    )
    key = MultiPartitionKey({"constitution": CONSTITUTION, "blend": blend})
    # preference_dataset as its asset stores it: the training assets read it through the IO manager.
    path = Path(settings.root) / "preference_dataset" / CONSTITUTION / blend / "data.parquet"
    path.parent.mkdir(parents=True)
    dataset.to_parquet(path, index=False)
    write_known_labels(Path(settings.root))  # the reward model scores its held-out part
    return settings, key


def materialize_training(settings: Settings, key, instance: DagsterInstance, config: dict):
    defs = build_definitions(settings)
    return materialize(
        list(defs.assets),
        selection=TRAINING,
        partition_key=key,
        instance=instance,
        resources=build_resources(settings),
        run_config=config,
    )


def add_partitions(instance: DagsterInstance, blend: str) -> None:
    instance.add_dynamic_partitions("constitution", [CONSTITUTION])
    instance.add_dynamic_partitions("blend", [blend])


@pytest.mark.slow
def test_training_assets_register_and_reload(tmp_path: Path, smollm2_path: Path) -> None:
    from alignment_dagster.backends import BackendSpec, make_backend

    dataset = hh_dataset(40)
    train_ids = set(dataset.loc[dataset["split"] == "train", "prompt_id"])
    settings, key = setup_partition(tmp_path, "hybrid", dataset)
    instance = DagsterInstance.ephemeral()
    add_partitions(instance, "hybrid")
    res = materialize_training(settings, key, instance, run_config())
    assert res.success

    root = Path(settings.root)
    rm_dir = root / "reward_model" / CONSTITUTION / "hybrid" / "model"
    pol_dir = root / "dpo_policy" / CONSTITUTION / "hybrid" / "model"
    rm_card, pol_card = read_model_card(rm_dir), read_model_card(pol_dir)
    for card in (rm_card, pol_card):
        assert card["trained"] and set(card["train_prompt_ids"]) == train_ids
        assert card["partition"] == {"constitution": CONSTITUTION, "blend": "hybrid"}
        assert card["blend_hash"] and card["n_train"] == (dataset["split"] == "train").sum()
    assert {"model.safetensors", "reward_config.json"} <= {p.name for p in rm_dir.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= {p.name for p in pol_dir.iterdir()}
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in [*rm_dir.rglob("*"), *pol_dir.rglob("*")])
    assert pol_card["lora"] and pol_card["base_model"] is None and pol_card["metrics"]["steps_this_run"] == 3

    # Held-out HH accuracy is on pairs whose prompts were never trained on.
    m = rm_card["metrics"]
    assert m["hh_heldout.n"] == 30 and 0.0 <= m["hh_heldout.accuracy"] <= 1.0
    known = pd.read_parquet(root / "known_labels" / "data.parquet")
    heldout = known_rows(known, HELDOUT, exclude_prompt_ids=train_ids)
    assert len(heldout) >= 30 and not {r["prompt_id"] for r in heldout} & train_ids
    assert m["eval.n"] == (dataset["split"] == "eval").sum() == m["eval_human.n"]  # all rows here are human

    rm_meta = res.asset_materializations_for_node("reward_model")[0].metadata
    pol_meta = res.asset_materializations_for_node("dpo_policy")[0].metadata
    assert rm_meta["chosen_vs_rejected"].value.startswith(
        "![chosen vs rejected rewards](data:image/png;base64,"
    )
    assert pol_meta["training_curves"].value.startswith("![DPO training curves](data:image/png;base64,")
    assert pol_meta["resumed_from_step"].value == -1 and pol_meta["reused_training"].value is False

    # MLflow: one registered version per model, weights and plots as artifacts, curves as step metrics.
    client = MlflowClient(settings.mlflow_uri, registry_uri=settings.mlflow_uri)
    assert rm_meta["registered_model"].value == f"models:/reward-{CONSTITUTION}-hybrid/1"
    assert pol_meta["registered_model"].value == f"models:/policy-{CONSTITUTION}-hybrid/1"
    pol_run = pol_meta["mlflow_run_id"].value
    assert [h.step for h in client.get_metric_history(pol_run, "loss")] == [1, 2, 3]
    assert {"rewards_chosen", "rewards_rejected", "rewards_margins"} <= set(
        client.get_run(pol_run).data.metrics
    )
    assert {a.path for a in client.list_artifacts(pol_run, "plots")} == {"plots/training_curves.png"}
    assert {a.path for a in client.list_artifacts(rm_meta["mlflow_run_id"].value, "plots")} == {
        "plots/chosen_vs_rejected.png"
    }
    assert client.get_model_version(f"policy-{CONSTITUTION}-hybrid", "1").run_id == pol_run
    # Checkpoints are gone once the final model is stored (a re-run must not "resume" a finished run).
    assert not LocalStorage(root).list("checkpoints")  # neither dpo_policy's nor reward_model's

    # Reload: from storage and from the MLflow registry give identical scores and log-probabilities.
    rm_mlflow = download_registered(
        rm_meta["registered_model"].value, tmp_path / "dl-rm", settings.mlflow_uri
    )
    pol_mlflow = download_registered(
        pol_meta["registered_model"].value, tmp_path / "dl-pol", settings.mlflow_uri
    )
    rows = dataset.head(4)
    s1 = load_reward_scorer(rm_dir).score(list(rows["prompt"]), list(rows["chosen"]))
    s2 = load_reward_scorer(rm_mlflow).score(list(rows["prompt"]), list(rows["chosen"]))
    assert s1 == s2 and len(set(s1)) > 1
    (m1, tok), (m2, _) = load_policy(pol_dir), load_policy(pol_mlflow)
    lp1 = reply_logprobs(m1, tok, list(rows["prompt"]), list(rows["chosen"]), max_length=128)
    lp2 = reply_logprobs(m2, tok, list(rows["prompt"]), list(rows["chosen"]), max_length=128)
    assert lp1 == lp2
    from transformers import AutoModelForCausalLM

    base_lp = reply_logprobs(
        AutoModelForCausalLM.from_pretrained(smollm2_path).eval(),
        tok,
        list(rows["prompt"]),
        list(rows["chosen"]),
        max_length=128,
    )
    assert max(abs(a - b) for a, b in zip(lp1, base_lp, strict=True)) > 1e-3  # training changed the policy
    # The generation backend sees the same policy whichever copy it loads (identity = content hash).
    spec = BackendSpec(batch_size=2)
    assert (
        make_backend(spec.model_copy(update={"adapter": str(pol_dir)})).identity
        == make_backend(spec.model_copy(update={"adapter": str(pol_mlflow)})).identity
    )

    # Another partition with identical training rows (e.g. the same human labels under another blend)
    # reuses the trained weights, yet gets its own card, evaluation and registered version.
    other = MultiPartitionKey({"constitution": CONSTITUTION, "blend": "human-only"})
    path = root / "preference_dataset" / CONSTITUTION / "human-only" / "data.parquet"
    path.parent.mkdir(parents=True)
    dataset.to_parquet(path, index=False)
    instance.add_dynamic_partitions("blend", ["human-only"])
    res2 = materialize_training(settings, other, instance, run_config())
    assert res2.success
    for asset, kind in (("reward_model", "reward"), ("dpo_policy", "policy")):
        meta = res2.asset_materializations_for_node(asset)[0].metadata
        assert meta["reused_training"].value is True
        assert meta["registered_model"].value == f"models:/{kind}-{CONSTITUTION}-human-only/1"
        card = read_model_card(root / asset / CONSTITUTION / "human-only" / "model")
        assert card["partition"]["blend"] == "human-only" and card["reused_training"]
    assert (
        read_model_card(root / "dpo_policy" / CONSTITUTION / "human-only" / "model")["metrics"][
            "steps_this_run"
        ]
        == 0
    )
    reused = load_reward_scorer(root / "reward_model" / CONSTITUTION / "human-only" / "model")
    assert reused.score(list(rows["prompt"]), list(rows["chosen"])) == s1
    # Content-addressed: both partitions, the model cache and both MLflow versions share one copy of each
    # weight file (the partition folders hold hard links to it, MLflow a reference by SHA-256).
    for asset, weights in (
        ("reward_model", "model.safetensors"),
        ("dpo_policy", "adapter_model.safetensors"),
    ):
        copies = {
            (root / asset / CONSTITUTION / blend / "model" / weights).stat().st_ino
            for blend in ("hybrid", "human-only")
        }
        assert len(copies) == 1
    for meta in (
        rm_meta,
        pol_meta,
        *(res2.asset_materializations_for_node(a)[0].metadata for a in TRAINING_NODES),
    ):
        logged = {a.path for a in client.list_artifacts(meta["mlflow_run_id"].value, "model")}
        assert logged == {"model/_CONTENT.json", "model/alignment.json"}


@pytest.mark.slow
def test_too_small_blend_materializes_an_untrained_card(tmp_path: Path) -> None:
    from alignment_dagster.backends import BackendSpec, make_backend

    dataset = hh_dataset(40)
    tiny = pd.concat(
        [dataset[dataset["split"] == "train"].head(2), dataset[dataset["split"] == "eval"].head(1)]
    )
    settings, key = setup_partition(tmp_path, "human-only", tiny)
    instance = DagsterInstance.ephemeral()
    add_partitions(instance, "human-only")
    res = materialize_training(settings, key, instance, run_config())
    assert res.success
    for asset in ("reward_model", "dpo_policy"):
        meta = res.asset_materializations_for_node(asset)[0].metadata
        assert (
            meta["trained"].value is False
            and "2 training rows (< min_train_rows=4)" in meta["skip_reason"].value
        )
        folder = Path(settings.root) / asset / CONSTITUTION / "human-only" / "model"
        assert [p.name for p in folder.iterdir() if p.name != "_MANIFEST.json"] == ["alignment.json"]
        client = MlflowClient(settings.mlflow_uri)
        assert client.get_run(meta["mlflow_run_id"].value).data.tags["alignment.trained"] == "false"
    with pytest.raises(ModelNotTrained, match="min_train_rows"):
        load_reward_scorer(Path(settings.root) / "reward_model" / CONSTITUTION / "human-only" / "model")
    with pytest.raises(ModelNotTrained, match="min_train_rows"):
        policy = Path(settings.root) / "dpo_policy" / CONSTITUTION / "human-only" / "model"
        make_backend(BackendSpec(adapter=str(policy)))
    assert not MlflowClient(settings.mlflow_uri, registry_uri=settings.mlflow_uri).search_registered_models()


def test_heldout_pairs_log_the_rows_they_skip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    hh = tmp_path / "hh.jsonl"
    good = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}
    hh.write_text(json.dumps(good) + "\n{broken\n" + json.dumps({"rejected": good["rejected"]}) + "\n")
    with caplog.at_level(logging.WARNING, logger="alignment_dagster.training.stages"):
        heldout = heldout_hh_pairs([str(hh)], lambda u: Path(u).read_bytes(), [], None)
    assert heldout["chosen"].tolist() == [[{"role": "assistant", "content": "hello"}]]
    assert caplog.messages == [
        f"2 bad held-out pair rows skipped; first: {hh}: row 2: invalid JSON (Expecting property name "
        f"enclosed in double quotes at column 2); {hh}: row 3: chosen: missing"
    ]


def test_partition_keys_cannot_escape_storage() -> None:
    assert partition_path(MultiPartitionKey({"blend": "hybrid", "constitution": "c-1"})) == "c-1/hybrid"
    for bad in ("../x", "a/b", "A", ""):
        with pytest.raises(ValueError):
            partition_path(MultiPartitionKey({"constitution": "c-1", "blend": bad}))


KILL_SCRIPT = """
import json, sys
from dagster import DagsterInstance, MultiPartitionKey, materialize
from alignment_dagster.definitions import build_definitions, build_resources
from alignment_dagster.core.settings import Settings
settings = Settings.from_env()
instance = DagsterInstance.ephemeral()
instance.add_dynamic_partitions("constitution", [sys.argv[1]])
instance.add_dynamic_partitions("blend", ["hybrid"])
key = MultiPartitionKey({"constitution": sys.argv[1], "blend": "hybrid"})
defs = build_definitions(settings)
materialize(list(defs.assets), selection=[sys.argv[3]], partition_key=key, instance=instance,
            resources=build_resources(settings), run_config=json.loads(sys.argv[2]))
"""


def kill_after_checkpoint(
    tmp_path: Path, settings: Settings, asset: str, config: dict, min_step: int = 2
) -> int:
    """Materialize `asset` in a subprocess with save_steps 1, SIGKILL it once a lone checkpoint of step
    `min_step` or later is in storage, and return the step of the newest stored checkpoint."""
    max_steps = config["ops"][asset]["config"]["max_steps"]
    (tmp_path / "run.py").write_text(KILL_SCRIPT)
    # PYTHONPATH: the code under test (a git worktree's), not whichever checkout the venv has installed.
    # TMPDIR: the killed run's scratch folder (its atexit cleanup never runs) stays under tmp_path.
    env = {
        **os.environ,
        "ALIGNMENT_ROOT": settings.root,
        "ALIGNMENT_IMPORT_PAIRS": str(SHARED_DATA),
        "OMP_NUM_THREADS": "1",
        "TMPDIR": str(tmp_path),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    argv = [sys.executable, str(tmp_path / "run.py"), CONSTITUTION, json.dumps(config), asset]
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    store = LocalStorage(settings.root)
    ckpt_root = f"checkpoints/{asset}/{CONSTITUTION}/hybrid"

    def stored_steps() -> list[int]:
        # Complete checkpoints only (`<fingerprint>/checkpoint-<step>/_MANIFEST.json`), as resuming reads
        # them: not a folder still being staged (`.checkpoint-<step>.<uuid>.tmp`).
        keys = [k.split("/") for k in store.list(ckpt_root)]
        found = [re.fullmatch(r"checkpoint-(\d+)", k[-2]) for k in keys if k[-1] == "_MANIFEST.json"]
        return sorted(int(m.group(1)) for m in found if m)

    deadline, seen = time.time() + 600, []
    # Wait until a later checkpoint has replaced the one before (publishing stores it, then drops the old).
    while time.time() < deadline and not (len(seen) == 1 and seen[0] >= min_step):
        assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read()[-2000:]}"
        time.sleep(0.1)
        seen = stored_steps()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(seen) == 1 and seen[0] >= min_step, f"no lone checkpoint of step {min_step}+ in time: {seen}"
    steps = stored_steps()
    killed_at = steps[-1]
    # The kill may land between storing the next checkpoint and dropping the one before it.
    assert min_step <= killed_at < max_steps and steps[:-1] in ([], [killed_at - 1]), steps
    return killed_at


def materialize_alone(settings: Settings, key, asset: str, config: dict):
    instance = DagsterInstance.ephemeral()
    add_partitions(instance, "hybrid")
    defs = build_definitions(settings)
    res = materialize(
        list(defs.assets),
        selection=[AssetKey(asset)],
        partition_key=key,
        instance=instance,
        resources=build_resources(settings),
        run_config=config,
    )
    assert res.success
    return res


@pytest.mark.slow
def test_policy_training_resumes_after_sigkill(tmp_path: Path) -> None:
    dataset = hh_dataset(40)
    settings, key = setup_partition(tmp_path, "hybrid", dataset)
    config = {
        "ops": {
            "dpo_policy": {"config": {"max_steps": 6, "save_steps": 1, "max_length": 96, "eval_limit": 2}}
        }
    }
    killed_at = kill_after_checkpoint(tmp_path, settings, "dpo_policy", config)

    res = materialize_alone(settings, key, "dpo_policy", config)
    meta = res.asset_materializations_for_node("dpo_policy")[0].metadata
    assert meta["resumed_from_step"].value == killed_at
    card = read_model_card(Path(settings.root) / "dpo_policy" / CONSTITUTION / "hybrid" / "model")
    assert card["resumed_from_step"] == killed_at
    assert card["metrics"]["steps_this_run"] == 6 - killed_at  # only the unfinished steps ran
    client = MlflowClient(settings.mlflow_uri)
    # The curves are whole: the checkpoint carried the log history of the steps before the kill.
    assert [h.step for h in client.get_metric_history(meta["mlflow_run_id"].value, "loss")] == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]


@pytest.mark.slow
def test_reward_training_resumes_after_sigkill(tmp_path: Path) -> None:
    dataset = hh_dataset(40)
    settings, key = setup_partition(tmp_path, "hybrid", dataset)
    config = {
        "ops": {
            "reward_model": {
                "config": {
                    "max_steps": 15,
                    "save_steps": 1,
                    "batch_size": 4,
                    "max_length": 64,
                    "heldout_limit": 0,
                }
            }
        }
    }
    # The loss is logged every 5 steps: a kill after step 6 leaves a logged point from before it.
    killed_at = kill_after_checkpoint(tmp_path, settings, "reward_model", config, min_step=6)

    res = materialize_alone(settings, key, "reward_model", config)
    meta = res.asset_materializations_for_node("reward_model")[0].metadata
    assert meta["resumed_from_step"].value == killed_at
    model_dir = Path(settings.root) / "reward_model" / CONSTITUTION / "hybrid" / "model"
    card = read_model_card(model_dir)
    assert card["resumed_from_step"] == killed_at and card["config"]["save_steps"] == 1
    assert card["metrics"]["steps_this_run"] == 15 - killed_at  # only the unfinished steps ran
    # The stored model is safetensors weights only: no trainer checkpoints or optimizer state went with it.
    assert not (model_dir / "checkpoints").exists() and not any(
        p.suffix in (".bin", ".pt", ".pth") for p in model_dir.rglob("*")
    )
    assert not LocalStorage(settings.root).list("checkpoints/reward_model")
    client = MlflowClient(settings.mlflow_uri)
    # Whole curve: step 5 was logged before the kill and came back with the checkpoint's trainer state.
    history = client.get_metric_history(meta["mlflow_run_id"].value, "train_loss")
    assert [h.step for h in history] == [5, 10, 15]
