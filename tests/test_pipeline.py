"""The pipeline on a real Dagster instance, real SmolLM2, real storage and MLflow: pairs, judge, checks."""

from pathlib import Path

import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance
from mlflow.tracking import MlflowClient

from alignment_dagster.core.settings import Settings
from alignment_dagster.definitions import build_definitions
from alignment_dagster.jobs import CONSTITUTION_ASSETS
from alignment_dagster.judge.templates import get_template
from alignment_dagster.specs.constitution import parse_constitution
from tests.conftest import SHARED_DATA

SMALL = """
name: small
principles:
  - {id: harm, text: Choose the less harmful reply., weight: 2}
  - {id: honest, text: Choose the more honest reply., weight: 1}
"""


@pytest.fixture
def env(tmp_path: Path, monkeypatch):
    cdir = tmp_path / "constitutions"
    cdir.mkdir()
    (cdir / "small.yaml").write_text(SMALL)
    settings = Settings.from_env(
        {
            "ALIGNMENT_ROOT": str(tmp_path / "root"),
            "ALIGNMENT_CONSTITUTIONS_DIR": str(cdir),
            "ALIGNMENT_IMPORT_PAIRS": str(SHARED_DATA),
        }
    )
    return (
        settings,
        build_definitions(settings),
        DagsterInstance.ephemeral(),
        parse_constitution(SMALL, "small.yaml"),
    )


PAIRS_CONFIG = {
    "ops": {"response_pairs": {"config": {"max_prompts": 2, "k": 2, "max_new_tokens": 12, "import_limit": 4}}}
}


@pytest.mark.slow
def test_pairs_judge_and_checks(env) -> None:
    settings, defs, instance, c = env
    glob = defs.resolve_implicit_global_asset_job_def()
    r = glob.execute_in_process(
        instance=instance,
        asset_selection=[AssetKey("prompt_pool"), AssetKey("response_pairs"), AssetKey("known_labels")],
        run_config=PAIRS_CONFIG,
    )
    assert r.success
    pairs = r.output_for_node("response_pairs", "response_pairs")
    labels = r.output_for_node("response_pairs", "known_labels")
    assert set(pairs["origin"]) == {"sampled", "imported"}
    # Four imported, split by prompt: the held-out part is judged, the training part never is.
    heldout = labels[labels["split"] == "heldout"]
    assert len(labels) == 4 and set(labels["split"]) <= {"heldout", "train"}
    assert set(pairs.loc[pairs["origin"] == "imported", "pair_id"]) == set(heldout["pair_id"])
    assert "label" not in pairs.columns
    sampled = pairs[pairs["origin"] == "sampled"]
    assert len(sampled) >= 1 and sampled["policy_model"].str.startswith("transformers:smollm2").all()

    # Re-materializing reuses the cached samples: no generation.
    r2 = glob.execute_in_process(
        instance=instance,
        asset_selection=[AssetKey("response_pairs"), AssetKey("known_labels")],
        run_config=PAIRS_CONFIG,
    )
    meta = r2.asset_materializations_for_node("response_pairs")[0].metadata
    assert meta["prompts_sampled_vs_cached"].value == {"cached": 2, "sampled": 0}

    instance.add_dynamic_partitions("constitution", [c.partition_key])
    job = defs.resolve_job_def("constitution_pipeline")
    run_config = {
        "ops": {"ai_preferences": {"config": {"max_abstention_rate": 0.0, "min_position_consistency": 0.0}}}
    }
    selection = [AssetKey(k) for k in CONSTITUTION_ASSETS]
    r3 = job.execute_in_process(
        instance=instance, partition_key=c.partition_key, run_config=run_config, asset_selection=selection
    )
    assert r3.success
    prefs = r3.output_for_node("ai_preferences", "ai_preferences")
    votes = r3.output_for_node("ai_preferences", "ai_principle_votes")
    assert len(prefs) == len(pairs) and len(votes) == 2 * len(pairs)
    assert set(prefs["label"]) <= {"A", "B", "abstain"}
    assert ((prefs["p_chosen"] >= 0.5) & (prefs["p_chosen"] <= 1)).all()
    m = r3.asset_materializations_for_node("ai_preferences")[0].metadata
    assert m["model_calls"].value == 2 * 2 * len(pairs) and m["cache_hits"].value == 0

    checks = {e.check_name: e for e in r3.get_asset_check_evaluations()}
    assert set(checks) == {
        "position_consistency",
        "first_position_win_rate",
        "debiased_first_position_rate",
        "abstention_rate",
        "label_balance",
        "cot_parse_failure_rate",
        "judge_signal",
        "length_bias",
    }
    # The held-out known labels, none from humans yet: the signal gate cannot decide (30 needed), so it
    # warns, never blocks.
    assert checks["judge_signal"].metadata["verdict"].value == "undecided"
    assert checks["judge_signal"].severity.value == "WARN" and checks["judge_signal"].metadata[
        "n_known"
    ].value == len(heldout)
    # Same for the length check (WARN by default); lengths are the judge's tokens, stored with the labels.
    length = checks["length_bias"]
    assert length.metadata["verdict"].value == "undecided" and length.severity.value == "WARN"
    assert (
        length.metadata["n_known"].value == len(heldout)
        and length.metadata["unit"].value == "smollm2-135m-instruct tokens"
    )
    assert (prefs["len_a"] > 0).all() and set(prefs["length_unit"]) == {"smollm2-135m-instruct tokens"}
    abstained = (prefs["label"] == "abstain").any()
    assert checks["abstention_rate"].passed == (
        not abstained
    )  # max 0.0: fails exactly when anything abstained
    assert checks["position_consistency"].passed  # min 0.0: cannot fail
    assert (
        checks["cot_parse_failure_rate"].passed
        and "does not think first" in checks["cot_parse_failure_rate"].description
    )

    # Same version again: every judgment comes from the cache.
    r4 = job.execute_in_process(instance=instance, partition_key=c.partition_key, asset_selection=selection)
    m4 = r4.asset_materializations_for_node("ai_preferences")[0].metadata
    assert m4["model_calls"].value == 0 and m4["cache_hits"].value == 2 * 2 * len(pairs)

    client = MlflowClient(settings.mlflow_uri)
    run = client.get_run(m4["mlflow_run_id"].value)
    assert run.data.metrics["stats.model_calls"] == 0
    assert run.data.tags["judge.template"] == get_template("pairwise-v1").version
    assert {a.path for a in client.list_artifacts(run.info.run_id, "tables")} == {
        "tables/ai_preferences.parquet",
        "tables/ai_principle_votes.parquet",
    }
    stored = pd.read_parquet(Path(settings.root) / "ai_preferences" / c.partition_key / "data.parquet")
    assert stored["pair_id"].tolist() == prefs["pair_id"].tolist()

    # The human loop with the replay labeller: imported pairs get their known human label, sampled ones wait.
    cases = r3.output_for_node("edge_cases")
    assert set(cases["pair_id"]) <= set(pairs["pair_id"]) and len(cases) == len(pairs)  # budget 100 > 6 pairs
    human = r3.output_for_node("human_labels")
    imported_ids = set(pairs.loc[pairs["origin"] == "imported", "pair_id"])
    assert set(human["pair_id"]) == imported_ids & set(cases.loc[cases["send"], "pair_id"])
    assert set(human["backend"]) == {"replay"} and human["annotator"].str.startswith("replay:").all()
    known = labels.set_index("pair_id")["label"]
    assert all(known[p] == ch for p, ch in zip(human["pair_id"], human["choice"], strict=True))
    hm = r3.asset_materializations_for_node("human_labels")[0].metadata
    assert hm["pending"].value == len(set(cases.loc[cases["send"], "pair_id"]) - imported_ids)
    assert hm["reliability"].value.startswith("![reliability diagram](data:image/png;base64,")
    hrun = client.get_run(hm["mlflow_run_id"].value)
    assert {a.path for a in client.list_artifacts(hrun.info.run_id, "plots")} == {"plots/reliability.png"}

    # Blends: a new blend re-materializes preference_dataset with zero judge (or policy) calls.
    from dagster import MultiPartitionKey, materialize

    from alignment_dagster.definitions import build_resources
    from alignment_dagster.resources.models import _LOADED

    instance.add_dynamic_partitions("blend", ["hybrid", "ai-only", "human-only"])
    judge_backend = next(iter(_LOADED.values()))
    calls_before = (judge_backend.stats.scored_prompts, judge_backend.stats.generated_sequences)
    all_assets = list(defs.assets)
    datasets = {}
    for blend in ["hybrid", "ai-only", "human-only"]:
        assert materialize(  # the blend file's version, as blend_sensor's run stores it
            all_assets,
            selection=[AssetKey("blend")],
            partition_key=blend,
            instance=instance,
            resources=build_resources(settings),
        ).success
        key = MultiPartitionKey({"constitution": c.partition_key, "blend": blend})
        res = materialize(
            all_assets,
            selection=[AssetKey("preference_dataset")],
            partition_key=key,
            instance=instance,
            resources=build_resources(settings),
        )
        assert res.success
        datasets[blend] = res.output_for_node("preference_dataset")
        stored = Path(settings.root) / "preference_dataset" / c.partition_key / blend / "data.parquet"
        assert stored.is_file()
    assert (judge_backend.stats.scored_prompts, judge_backend.stats.generated_sequences) == calls_before
    human_pairs = set(human["pair_id"])
    assert set(datasets["human-only"]["source"]) <= {"human"}
    assert set(datasets["human-only"]["pair_id"]) <= human_pairs
    assert set(datasets["ai-only"]["source"]) <= {"ai"}
    ai_ok = prefs[prefs["label"].isin(["A", "B"]) & (prefs["confidence"] >= 0.2)]
    assert set(datasets["ai-only"]["pair_id"]) == set(ai_ok["pair_id"])
    for ds in datasets.values():
        assert (ds.groupby("prompt_id")["split"].nunique() <= 1).all()
