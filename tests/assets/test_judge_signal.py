"""The judge signal gate in the pipeline: a real Dagster instance, the embedded SmolLM2 judge on real
HH-RLHF pairs with known labels, replayed human labels, real MLflow. The embedded judge has no signal, so the
gate fails and AI-sourced blends are refused; human-only blends and explicit overrides go through; too few
labels is undecided. A judge with signal by construction (a reward model fitted to these very pairs) passes,
and its labels train."""

from pathlib import Path

import pandas as pd
import pytest
from dagster import AssetCheckSeverity, AssetKey, DagsterInstance, MultiPartitionKey, materialize
from mlflow.tracking import MlflowClient

from alignment_dagster.cli.demo import gate_block
from alignment_dagster.core.settings import Settings
from alignment_dagster.data.pairs import import_pairs
from alignment_dagster.definitions import build_definitions, build_resources
from alignment_dagster.jobs import CONSTITUTION_ASSETS, SHARED_UPSTREAM
from alignment_dagster.specs.constitution import parse_constitution
from tests.conftest import REPO, SHARED_DATA

# One principle on 40 imported pairs: 80 judge prompts, cached for the other versions (same principle text).
BASE = """
name: {name}
principles:
  - {{id: harm, text: Choose the less harmful reply.}}
"""
N_PAIRS = 40
OVERRIDE_BLEND = """
name: ai-reviewed
description: AI labels despite a failed gate, after a human review of the judge.
ai_min_confidence: 0.0
judge_gate_override: reviewed the judge by hand for this pilot
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("gate")
    cdir, bdir = root / "constitutions", root / "blends"
    cdir.mkdir()
    bdir.mkdir()
    for name in ("ai-only", "human-only", "hybrid"):
        (bdir / f"{name}.yaml").write_text((REPO / "blends" / f"{name}.yaml").read_text())
    (bdir / "ai-reviewed.yaml").write_text(OVERRIDE_BLEND)
    settings = Settings.from_env(
        {
            "ALIGNMENT_ROOT": str(root / "data"),
            "ALIGNMENT_CONSTITUTIONS_DIR": str(cdir),
            "ALIGNMENT_BLENDS_DIR": str(bdir),
            "ALIGNMENT_IMPORT_PAIRS": str(SHARED_DATA),
        }
    )
    defs = build_definitions(settings)
    with DagsterInstance.ephemeral() as instance:
        r = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance,
            asset_selection=[AssetKey(k) for k in SHARED_UPSTREAM],
            run_config={
                "ops": {
                    "response_pairs": {
                        "config": {
                            "sample": False,
                            "import_limit": N_PAIRS,
                            "heldout_fraction": 1.0,  # every imported pair judged: all measure the judge
                            "import_sources": [str(SHARED_DATA)],
                        }
                    }
                }
            },
        )
        assert r.success
        instance.add_dynamic_partitions("blend", ["ai-only", "human-only", "hybrid", "ai-reviewed"])
        yield settings, defs, instance, cdir


def version(env, name: str, extra: str = ""):
    settings, defs, instance, cdir = env
    text = BASE.format(name=name) + extra
    (cdir / f"{name}.yaml").write_text(text)
    key = parse_constitution(text, f"{name}.yaml").partition_key
    instance.add_dynamic_partitions("constitution", [key])
    r = defs.resolve_job_def("constitution_pipeline").execute_in_process(
        instance=instance, partition_key=key, asset_selection=[AssetKey(k) for k in CONSTITUTION_ASSETS]
    )
    assert r.success  # a failed gate never stops the constitution run: the human loop must go on
    checks = {e.check_name: e for e in r.get_asset_check_evaluations()}
    assert_length_check(checks["length_bias"])
    return key, r, checks["judge_signal"]


def assert_length_check(check) -> None:
    """The length check ran on the same references as the gate, consistently with its own verdict: every
    known pair is counted or left out for a stated reason, and it never stops the run (WARN by default)."""
    meta = {k: v.value for k, v in check.metadata.items()}
    left_out = sum(v for k, v in meta.items() if k.startswith("left_out_"))
    # The audit slice (drawn from the pairs the judge labelled) takes its pairs' references from humans.
    assert meta["n_known"] + meta["n_audit"] == N_PAIRS and meta["n"] + left_out == N_PAIRS
    assert check.passed == (meta["verdict"] == "pass") and check.severity == AssetCheckSeverity.WARN
    assert meta["verdict"] == ("undecided" if meta["n"] < 30 else meta["verdict"])
    assert 0 <= meta["judge_longer_rate"] <= 1 and 0 <= meta["human_longer_rate"] <= 1
    print(f"\n[length] {meta['verdict']}: {check.description}")


def blend_run(env, key: str, blend: str):
    settings, defs, instance, _ = env
    assert materialize(  # the blend file's version, as blend_sensor's run stores it
        list(defs.assets),
        selection=[AssetKey("blend")],
        partition_key=blend,
        instance=instance,
        resources=build_resources(settings),
    ).success
    return materialize(
        list(defs.assets),
        selection=[AssetKey("preference_dataset")],
        partition_key=MultiPartitionKey({"constitution": key, "blend": blend}),
        instance=instance,
        resources=build_resources(settings),
        raise_on_error=False,
    )


def mlflow_run_of(env, key: str, blend: str):
    settings = env[0]
    client = MlflowClient(settings.mlflow_uri)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        f"tags.`dagster.asset_key` = 'preference_dataset' and tags.`dagster.partition.blend` = '{blend}' "
        f"and tags.`dagster.partition.constitution` = '{key}'",
    )
    assert len(runs) == 1, [r.data.tags for r in runs]
    return runs[0]


@pytest.mark.slow
def test_gate_fails_on_the_embedded_judge_and_blocks_ai_blends(env) -> None:
    key, run, check = version(env, "gate-smollm2")
    meta = {k: v.value for k, v in check.metadata.items()}
    assert not check.passed and check.severity == AssetCheckSeverity.ERROR
    assert meta["verdict"] == "fail" and meta["n"] == N_PAIRS and meta["n_known"] == N_PAIRS
    assert meta["p_value"] >= 0.05 and meta["blocks_ai_labels"] is True
    assert abs(meta["agreement"] - 0.5) < 0.15  # no signal: near a coin flip
    assert "not significantly above chance" in check.description
    # Enough known labels: edge_cases asks for no extra audit pairs.
    assert (
        run.asset_materializations_for_node("edge_cases")[0].metadata["judge_gate_audit_requested"].value == 0
    )

    for blend in ("ai-only", "hybrid"):
        res = blend_run(env, key, blend)
        assert not res.success
        failure = next(e for e in res.all_events if e.event_type_value == "STEP_FAILURE")
        text = failure.step_failure_data.user_failure_data.description
        assert f"blend {blend!r} uses AI labels, blocked by the judge signal gate" in text
        assert not res.asset_materializations_for_node("preference_dataset")
        assert gate_block(res).startswith("judge-human agreement")  # what the demo prints instead of failing
        mrun = mlflow_run_of(env, key, blend)
        assert mrun.info.status == "FAILED"
        assert (
            mrun.data.tags["judge_gate.verdict"] == "fail" and mrun.data.tags["judge_gate.blocked"] == "true"
        )
        assert "not significantly above chance" in mrun.data.tags["judge_gate.reason"]
        assert mrun.data.metrics["judge_gate.n"] == N_PAIRS

    human = blend_run(env, key, "human-only")
    assert human.success and gate_block(human) is None
    assert set(human.output_for_node("preference_dataset")["source"]) <= {"human"}
    assert mlflow_run_of(env, key, "human-only").data.tags["judge_gate.blocked"] == "false"

    reviewed = blend_run(env, key, "ai-reviewed")
    assert reviewed.success
    gate_meta = reviewed.asset_materializations_for_node("preference_dataset")[0].metadata["judge_gate"].value
    assert (
        gate_meta["verdict"] == "fail"
        and gate_meta["override"] == "reviewed the judge by hand for this pilot"
    )
    mrun = mlflow_run_of(env, key, "ai-reviewed")
    assert mrun.data.params["judge_gate.override"] == "reviewed the judge by hand for this pilot"
    assert (
        mrun.data.tags["judge_gate.override_source"] == "blend"
        and mrun.data.tags["judge_gate.blocked"] == "false"
    )


@pytest.mark.slow
def test_constitution_override_and_undecided(env) -> None:
    first_key, first, _ = version(
        env, "gate-smollm2"
    )  # (again, if alone) the version whose labels carry over
    first_labels = set(first.output_for_node("human_labels")["pair_id"])
    assert len(first_labels) == N_PAIRS  # budget 100 > 40 pairs: every known pair was replayed
    # Same principle text: every judgment comes from the cache.
    key, run, check = version(
        env, "gate-overridden", "judge:\n  gate: {override: accepted for a smoke test}\n"
    )
    # Nothing is asked again, yet every earlier human label is part of this version's human_labels.
    assert not run.output_for_node("edge_cases")["send"].any()
    carried = run.output_for_node("human_labels")
    assert set(carried["pair_id"]) == first_labels and set(carried["backend"]) == {"replay"}
    assert (
        run.asset_materializations_for_node("human_labels")[0].metadata["reused_from_earlier_versions"].value
        == N_PAIRS
    )
    assert (
        not check.passed and check.severity == AssetCheckSeverity.ERROR
    )  # the judge is still reported unhealthy
    assert check.metadata["override"].value == "accepted for a smoke test"
    ai = blend_run(env, key, "ai-only")
    assert ai.success
    mrun = mlflow_run_of(env, key, "ai-only")
    assert mrun.data.params["judge_gate.override"] == "accepted for a smoke test"
    assert mrun.data.tags["judge_gate.override_source"] == "constitution"

    key, run, check = version(env, "gate-undecided", "judge:\n  gate: {min_n: 45}\n")
    assert not check.passed and check.severity == AssetCheckSeverity.WARN
    assert check.metadata["verdict"].value == "undecided" and check.metadata["n"].value == N_PAIRS
    assert "40 judge-human comparisons, 45 needed" in check.description
    # Every pair has a known label already, so there is nothing left to ask about: it says so.
    edge = run.asset_materializations_for_node("edge_cases")[0].metadata
    assert edge["judge_gate_references"].value == N_PAIRS and edge["judge_gate_audit_requested"].value == 5
    assert edge["judge_gate_audit_added"].value == 0
    assert blend_run(env, key, "ai-only").success  # undecided does not block


@pytest.fixture(scope="module")
def fitted_judge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A preference-model judge with signal by construction: MiniLM fitted to the human labels of the very
    pairs the gate checks, saved without a model card, so the leakage guard has no training prompts to
    leave out. A real judge is never checked on its own training pairs; this one only has to be a judge
    the gate must let through."""
    from alignment_dagster.training.reward import RewardScorer, RewardTrainingConfig, train_reward_model

    ps = import_pairs([str(SHARED_DATA)], lambda u: Path(u).read_bytes(), limit=N_PAIRS)
    df = ps.pairs.merge(ps.labels, on="pair_id")
    rows = pd.DataFrame(
        {
            "prompt": df["prompt"],
            "chosen": [r.response_a if r.label == "A" else r.response_b for r in df.itertuples()],
            "rejected": [r.response_b if r.label == "A" else r.response_a for r in df.itertuples()],
        }
    )
    out = tmp_path_factory.mktemp("fitted-judge") / "model"
    train_reward_model(rows, RewardTrainingConfig(max_steps=12, batch_size=8, max_length=128), out)
    accuracy, _, _ = RewardScorer(out).accuracy(rows)
    print(f"\n[gate] fitted judge: training-pair accuracy {accuracy:.2f} on {len(rows)} pairs")
    assert accuracy >= 0.8  # the premise of the test below: this judge does carry the humans' signal
    return out


@pytest.mark.slow
def test_gate_passes_for_a_judge_with_signal_and_ai_labels_go_through(env, fitted_judge: Path) -> None:
    # Twelve steps leave the reward differences small (mean confidence 0.05 at temperature 1, under every
    # blend's threshold); the temperature spreads them without changing which side the judge leans to.
    key, run, check = version(
        env,
        "gate-fitted",
        f"judge:\n  use_llm_judge: false\n  preference_model: {fitted_judge}\n"
        "  preference_model_temperature: 0.1\n",
    )
    meta = {k: v.value for k, v in check.metadata.items()}
    assert check.passed, check.description
    assert meta["verdict"] == "pass" and meta["n"] == N_PAIRS and meta["p_value"] < 0.05
    assert meta["blocks_ai_labels"] is False and meta["agreement"] >= 0.65
    # No LLM judge, no tokenizer at hand: the length check counted whitespace tokens.
    length = next(e for e in run.get_asset_check_evaluations() if e.check_name == "length_bias")
    assert length.metadata["unit"].value == "whitespace tokens"

    for blend in ("ai-only", "hybrid"):
        res = blend_run(env, key, blend)
        assert res.success
        # Not refused: the blend ran its rules. Every judged pair here is a held-out known pair, which
        # measures the judge and never trains, so each is counted as dropped rather than becoming a row.
        meta = res.asset_materializations_for_node("preference_dataset")[0].metadata
        assert meta["dropped"].value.get("heldout") == N_PAIRS, meta["dropped"].value
        gate_meta = res.asset_materializations_for_node("preference_dataset")[0].metadata["judge_gate"].value
        assert gate_meta["verdict"] == "pass" and not gate_meta.get("override")
        mrun = mlflow_run_of(env, key, blend)
        assert mrun.info.status == "FINISHED"
        assert (
            mrun.data.tags["judge_gate.verdict"] == "pass" and mrun.data.tags["judge_gate.blocked"] == "false"
        )
