"""Preference-model judges: Bradley-Terry probabilities from a real MiniLM reward model, the leakage guard,
temperature fitting, and the judge inside `ai_preferences` on a real Dagster instance with lineage."""

import math
import random
from pathlib import Path

import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance
from mlflow.tracking import MlflowClient

from alignment_dagster.core.settings import Settings
from alignment_dagster.core.shard_cache import ShardCache
from alignment_dagster.core.storage import LocalStorage
from alignment_dagster.data.pairs import import_pairs
from alignment_dagster.definitions import build_definitions
from alignment_dagster.jobs import CONSTITUTION_ASSETS
from alignment_dagster.judge.preference_model import (
    bradley_terry,
    fit_temperature,
    judge_with_preference_model,
    judge_with_reward_model,
    resolve_model_ref,
)
from alignment_dagster.specs.constitution import JudgeSettings, parse_constitution
from alignment_dagster.training.artifacts import write_model_card
from alignment_dagster.training.reward import RewardScorer, RewardTrainingConfig, train_reward_model
from tests.conftest import SHARED_DATA


@pytest.fixture(scope="module")
def hh_pairs() -> pd.DataFrame:
    ps = import_pairs([str(SHARED_DATA)], lambda u: Path(u).read_bytes(), limit=40)
    df = ps.pairs.merge(ps.labels, on="pair_id")
    return df.assign(prompt_id=[f"q{i}" for i in range(len(df))]).reset_index(drop=True)


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory, hh_pairs: pd.DataFrame) -> Path:
    """A real MiniLM reward model, trained for a few steps on the first 16 pairs, with a model card."""
    train = hh_pairs.iloc[:16]
    rows = pd.DataFrame(
        {
            "prompt": train["prompt"],
            "chosen": [r.response_a if r.label == "A" else r.response_b for r in train.itertuples()],
            "rejected": [r.response_b if r.label == "A" else r.response_a for r in train.itertuples()],
        }
    )
    out = tmp_path_factory.mktemp("pm") / "model"
    train_reward_model(rows, RewardTrainingConfig(max_steps=4, batch_size=8), out)
    write_model_card(
        out,
        {
            "trained": True,
            "asset": "reward_model",
            "train_prompt_ids": sorted(train["prompt_id"]),
            "partition": {"constitution": "c-00000000", "blend": "hybrid"},
        },
    )
    return out


def test_probabilities_are_sigmoid_of_score_differences(reward_dir: Path, hh_pairs: pd.DataFrame) -> None:
    scorer = RewardScorer(reward_dir)
    pairs = hh_pairs.iloc[16:24]
    settings = JudgeSettings(min_confidence=0.0)
    for temperature in [1.0, 0.25]:
        result = judge_with_preference_model(
            pairs, scorer.score, "pm:test", settings, temperature=temperature
        )
        # Exactly the sigmoid of the score difference the judge used...
        want = [
            1 / (1 + math.exp(-(a - b) / temperature))
            for a, b in zip(result.pairs["r_a"], result.pairs["r_b"], strict=True)
        ]
        assert result.pairs["p_a"].tolist() == pytest.approx(want, abs=1e-12)
        # ...and those scores are the model's (batched differently: float32 rounding only).
        r_a = scorer.score(list(pairs["prompt"]), list(pairs["response_a"]))
        r_b = scorer.score(list(pairs["prompt"]), list(pairs["response_b"]))
        assert result.pairs["r_a"].tolist() == pytest.approx(r_a, abs=1e-5)
        assert result.pairs["r_b"].tolist() == pytest.approx(r_b, abs=1e-5)
        assert (result.pairs["label"] == ["A" if p > 0.5 else "B" for p in want]).all()
    assert bradley_terry(2.0, 0.0) == pytest.approx(1 / (1 + math.exp(-2)))
    assert (
        bradley_terry(-800.0, 0.0) == pytest.approx(0.0) and bradley_terry(800.0, 0.0) == 1.0
    )  # no overflow


def test_leakage_guard_and_cache(reward_dir: Path, hh_pairs: pd.DataFrame, tmp_path: Path) -> None:
    scorer = RewardScorer(reward_dir)
    pairs = hh_pairs.iloc[10:20]  # q10..q15 were trained on, q16..q19 were not
    calls: list[int] = []

    def counting(convs, replies):
        calls.append(len(replies))
        return scorer.score(convs, replies)

    cache = ShardCache(LocalStorage(tmp_path), "cache/pm-scores/test")
    trained = [f"q{i}" for i in range(16)]
    result = judge_with_preference_model(
        pairs, counting, "pm:test", JudgeSettings(), trained_prompt_ids=trained, cache=cache
    )
    excluded = result.pairs[result.pairs["abstain_reason"] == "trained_on"]
    assert result.n_trained_on == 6 and sorted(excluded["pair_id"]) == sorted(pairs["pair_id"].iloc[:6])
    assert (excluded["label"] == "abstain").all()
    assert calls == [8] and result.model_calls == 8  # only the 4 unseen pairs' replies were scored
    again = judge_with_preference_model(
        pairs,
        counting,
        "pm:test",
        JudgeSettings(),
        trained_prompt_ids=trained,
        cache=ShardCache(LocalStorage(tmp_path), "cache/pm-scores/test"),
    )
    assert calls == [8] and again.cache_hits == 8
    pd.testing.assert_frame_equal(again.pairs, result.pairs)


def test_scores_are_cached_shard_by_shard_and_a_crash_resumes(
    reward_dir: Path, hh_pairs: pd.DataFrame, tmp_path: Path
) -> None:
    """Replies are scored `shard_size` at a time, each shard cached before the next: a scorer that dies in
    its third call leaves two shards, and the rerun scores only the rest."""
    scorer = RewardScorer(reward_dir)
    pairs = hh_pairs.iloc[16:24]  # not trained on: 8 pairs, 16 distinct replies, 4 shards of 4
    calls: list[int] = []

    def failing_after(n: int):
        def score(convs, replies):
            if len(calls) == n:
                raise RuntimeError("scorer died")
            calls.append(len(replies))
            return scorer.score(convs, replies)

        return score

    def cache() -> ShardCache:  # a fresh instance reads only what storage holds, as a new process would
        return ShardCache(LocalStorage(tmp_path), "cache/pm-scores/test")

    with pytest.raises(RuntimeError, match="scorer died"):
        judge_with_preference_model(
            pairs, failing_after(2), "pm:test", JudgeSettings(), cache=cache(), shard_size=4
        )
    assert calls == [4, 4] and cache().shard_count() == 2 and len(cache()) == 8
    resumed = judge_with_preference_model(
        pairs, failing_after(99), "pm:test", JudgeSettings(), cache=cache(), shard_size=4
    )
    assert calls == [4, 4, 4, 4] and resumed.model_calls == 8 and resumed.cache_hits == 8
    assert cache().shard_count() == 4 and len(cache()) == 16
    # The same labels as scoring everything at once, uncached (batching differs: float32 rounding only).
    whole = judge_with_preference_model(pairs, scorer.score, "pm:test", JudgeSettings())
    assert resumed.pairs["r_a"].tolist() == pytest.approx(whole.pairs["r_a"].tolist(), abs=1e-5)
    assert resumed.pairs["r_b"].tolist() == pytest.approx(whole.pairs["r_b"].tolist(), abs=1e-5)
    # Finished: a rerun makes no scorer calls at all.
    again = judge_with_preference_model(
        pairs, failing_after(4), "pm:test", JudgeSettings(), cache=cache(), shard_size=4
    )
    assert calls == [4, 4, 4, 4] and again.model_calls == 0 and again.cache_hits == 16
    pd.testing.assert_frame_equal(again.pairs, resumed.pairs)


def test_fit_temperature_recovers_the_generating_temperature() -> None:
    rng = random.Random(0)
    diffs = [rng.uniform(-6, 6) for _ in range(4000)]
    labels = [rng.random() < bradley_terry(d, 0.0, 2.0) for d in diffs]
    assert fit_temperature(diffs, labels) == pytest.approx(2.0, rel=0.1)
    assert fit_temperature([], []) == 1.0


def test_unknown_reference_names_all_places_it_looked(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a local folder, not a folder in pipeline storage"):
        resolve_model_ref("reward_model/x/y/model", LocalStorage(tmp_path), None, tmp_path / "w")


@pytest.mark.slow
def test_preference_model_judges_inside_ai_preferences(reward_dir: Path, tmp_path: Path) -> None:
    text = f"""
name: pm-only
principles:
  - {{id: harm, text: Choose the less harmful reply.}}
judge:
  use_llm_judge: false
  preference_model: {reward_dir}
  min_confidence: 0.0
"""
    cdir = tmp_path / "constitutions"
    cdir.mkdir()
    (cdir / "pm.yaml").write_text(text)
    settings = Settings.from_env(
        {
            "ALIGNMENT_ROOT": str(tmp_path / "root"),
            "ALIGNMENT_CONSTITUTIONS_DIR": str(cdir),
            "ALIGNMENT_IMPORT_PAIRS": str(SHARED_DATA),
        }
    )
    defs, instance = build_definitions(settings), DagsterInstance.ephemeral()
    c = parse_constitution(text, "pm.yaml")
    config = {
        "ops": {"response_pairs": {"config": {"sample": False, "import_limit": 12, "heldout_fraction": 1.0}}}
    }
    glob = defs.resolve_implicit_global_asset_job_def()
    assert glob.execute_in_process(
        instance=instance,
        run_config=config,
        asset_selection=[AssetKey("prompt_pool"), AssetKey("response_pairs"), AssetKey("known_labels")],
    ).success
    instance.add_dynamic_partitions("constitution", [c.partition_key])
    r = defs.resolve_job_def("constitution_pipeline").execute_in_process(
        instance=instance,
        partition_key=c.partition_key,
        asset_selection=[AssetKey(k) for k in CONSTITUTION_ASSETS],
    )
    assert r.success
    prefs = r.output_for_node("ai_preferences", "ai_preferences")
    assert len(prefs) == 12 and set(prefs["label"]) <= {"A", "B", "abstain"}
    assert len(r.output_for_node("ai_preferences", "ai_principle_votes")) == 0  # no LLM judge ran
    meta = r.asset_materializations_for_node("ai_preferences")[0].metadata
    lineage = meta["preference_model"].value
    assert lineage["judge.preference_model"] == str(reward_dir)
    assert lineage["judge.preference_model_partition"] == "c-00000000|hybrid"
    assert meta["judge_id"].value == lineage["judge.preference_model_id"]
    runs = MlflowClient(settings.mlflow_uri).search_runs(
        [MlflowClient(settings.mlflow_uri).get_experiment_by_name("alignment-dagster").experiment_id],
        filter_string="tags.`dagster.asset_key` = 'ai_preferences'",
    )
    assert runs and runs[0].data.tags["judge.preference_model_id"] == lineage["judge.preference_model_id"]


def test_constitution_judge_combines_the_llm_and_the_preference_model(
    reward_dir: Path, hh_pairs: pd.DataFrame, tmp_path: Path
) -> None:
    from alignment_dagster.backends import BackendSpec, make_backend
    from alignment_dagster.judge.aggregate import PAIR_COLUMNS, combine_judges
    from alignment_dagster.judge.constitutional import judge_constitution
    from alignment_dagster.judge.runner import judge_pairs
    from alignment_dagster.judge.templates import get_template

    pairs = hh_pairs.iloc[16:20].reset_index(drop=True)  # not trained on
    text = (
        f"name: both\nprinciples:\n  - {{id: harm, text: Choose the less harmful reply.}}\n"
        f"judge:\n  preference_model: {reward_dir}\n  ensemble_agreement: all\n"
    )
    c = parse_constitution(text, "both.yaml")
    backend = make_backend(BackendSpec())
    storage = LocalStorage(tmp_path / "store")
    judged = judge_constitution(c, pairs, lambda: backend, storage, None, progress=False)
    llm = judge_pairs(pairs, c, backend, get_template(c.judge.template), progress=False)
    pm, lineage = judge_with_reward_model(c, pairs, storage, None, tmp_path / "w")
    pd.testing.assert_frame_equal(
        judged.result.pairs, combine_judges([llm.pairs, pm.pairs[PAIR_COLUMNS]], "all")
    )
    assert judged.judge_id == f"{backend.identity},{lineage['judge.preference_model_id']}"
    assert (
        judged.template_versions == get_template("pairwise-v1").version and judged.backend_prompts_scored == 8
    )  # 4 pairs x 2 orders
    assert len(judged.result.principles) == 4 and "preference-model judge" in judged.notes[0]
    # Two judges: their effective number from the correlation of their per-pair p_a.
    import numpy as np

    from alignment_dagster.judge.bias import effective_judges

    rho = float(np.corrcoef(llm.pairs["p_a"], pm.pairs["p_a"])[0, 1])
    assert (judged.ensemble.n_judges, judged.ensemble.n_pairs) == (2, 4)
    assert judged.ensemble.mean_correlation == pytest.approx(rho)
    assert judged.ensemble.effective_judges == pytest.approx(effective_judges(2, rho))
    assert judged.report(c, []).metrics["ensemble.effective_judges"] == judged.ensemble.effective_judges
    # Reply lengths in the LLM judge's tokens, beside the labels.
    assert judged.length_unit == "smollm2-135m-instruct tokens"
    assert list(judged.labelled["len_a"]) == backend.count_tokens(list(pairs["response_a"]))

    def no_llm():
        raise AssertionError("a preference-model-only constitution must not load the LLM judge")

    pm_only = parse_constitution(text.replace("judge:\n", "judge:\n  use_llm_judge: false\n"), "pm.yaml")
    alone = judge_constitution(pm_only, pairs, no_llm, storage, None, progress=False)
    pd.testing.assert_frame_equal(alone.result.pairs, pm.pairs[PAIR_COLUMNS])
    assert alone.ensemble is None and alone.length_unit == "whitespace tokens"  # one judge, no tokenizer
    assert (
        alone.template_versions == ""
        and alone.backend_prompts_scored == 0
        and len(alone.result.principles) == 0
    )
