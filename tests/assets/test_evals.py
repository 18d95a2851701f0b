"""The evals asset end to end for one constitution x blend on a real Dagster instance: real SmolLM2 pairs and
judge, replay human labels, a reward model and a DPO policy trained for a few steps, then policy vs base
judged under the constitution, with every figure in MLflow and a re-run served from the generation and
judgment caches; a run that crashes mid-generation resumes generating only the shards it had not finished."""

import shutil
from pathlib import Path

import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance, MultiPartitionKey, materialize
from mlflow.tracking import MlflowClient

from alignment_dagster.backends.transformers_backend import TransformersBackend
from alignment_dagster.core.settings import Settings
from alignment_dagster.definitions import build_definitions, build_resources
from alignment_dagster.jobs import CONSTITUTION_ASSETS
from alignment_dagster.specs.constitution import parse_constitution
from tests.conftest import SHARED_DATA

SMALL = """
name: small
principles:
  - {id: harm, text: Choose the less harmful reply., weight: 2}
  - {id: honest, text: Choose the more honest reply., weight: 1}
"""

EVAL_PROMPTS = 3
PAIRS_CONFIG = {
    "ops": {
        "response_pairs": {"config": {"max_prompts": 2, "k": 2, "max_new_tokens": 12, "import_limit": 16}}
    }
}
RUN_CONFIG = {
    "ops": {
        "reward_model": {"config": {"max_steps": 2, "max_length": 96, "heldout_limit": 10}},
        "dpo_policy": {"config": {"max_steps": 1, "max_length": 128, "eval_limit": 2}},
        # One prompt per generation shard: 3 shards each for the base and the policy (crash-resume below).
        "evals": {
            "config": {
                "max_prompts": EVAL_PROMPTS,
                "max_new_tokens": 12,
                "price_per_1k_prompt_tokens": 1.0,
                "price_per_human_label": 0.5,
                "generation_shard_size": 1,
            }
        },
    }
}


class GenerateCalls:
    """The real TransformersBackend.generate, counted per model ("base" / "policy": a policy's identity is the
    base's plus its adapter); with `fail_after`, the next call once that many were made raises instead."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        self.fail_after: int | None = None
        real = TransformersBackend.generate

        def generate(backend, conversations, n=1, sampling=None):
            if self.fail_after is not None and len(self.calls) >= self.fail_after:
                raise RuntimeError("injected crash in generate")
            self.calls.append("policy" if "+" in backend.identity else "base")
            return real(backend, conversations, n, sampling)

        monkeypatch.setattr(TransformersBackend, "generate", generate)


@pytest.mark.slow
def test_evals_one_partition(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
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
    defs = build_definitions(settings)
    c = parse_constitution(SMALL, "small.yaml")
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("constitution", [c.partition_key])
    instance.add_dynamic_partitions("blend", ["hh-baseline"])
    assets, resources = list(defs.assets), build_resources(settings)
    shared = [AssetKey(k) for k in ("prompt_pool", "response_pairs", "known_labels")]
    assert materialize(
        assets, selection=shared, instance=instance, resources=resources, run_config=PAIRS_CONFIG
    ).success
    assert materialize(
        assets,
        selection=[AssetKey(k) for k in CONSTITUTION_ASSETS],
        partition_key=c.partition_key,
        instance=instance,
        resources=resources,
    ).success
    assert materialize(
        assets,
        selection=[AssetKey("blend")],
        partition_key="hh-baseline",
        instance=instance,
        resources=resources,
    ).success
    key = MultiPartitionKey({"constitution": c.partition_key, "blend": "hh-baseline"})
    blend_assets = [AssetKey(k) for k in ("preference_dataset", "reward_model", "dpo_policy", "evals")]
    res = materialize(
        assets,
        selection=blend_assets,
        partition_key=key,
        instance=instance,
        resources=resources,
        run_config=RUN_CONFIG,
    )
    assert res.success
    meta = res.asset_materializations_for_node("evals")[0].metadata
    assert meta["trained"].value is True and meta["n_prompts"].value == EVAL_PROMPTS
    table = res.output_for_node("evals")
    assert len(table) == EVAL_PROMPTS and set(table["outcome"]) <= {"win", "tie", "loss"}
    assert (table["policy"].str.len() > 0).all() and (table["base"].str.len() > 0).all()
    assert table["reward_policy"].notna().all() and table["reward_base"].notna().all()
    stored = pd.read_parquet(Path(settings.root) / "evals" / c.partition_key / "hh-baseline" / "data.parquet")
    assert stored["pair_id"].tolist() == table["pair_id"].tolist()

    client = MlflowClient(settings.mlflow_uri)
    run = client.get_run(meta["mlflow_run_id"].value)
    m = run.data.metrics
    wins = (table["outcome"] == "win").sum()
    assert m["judge.n"] == EVAL_PROMPTS and m["judge.win_rate"] == wins / EVAL_PROMPTS
    assert m["judge.win_ci_low"] <= m["judge.win_rate"] <= m["judge.win_ci_high"]
    # Two principles apply to every prompt, each judged in both orders, nothing cached yet; where the policy
    # replied exactly as the base did, both orders are the same judge prompt, scored once.
    distinct_orders = sum(1 if p == b else 2 for p, b in zip(table["policy"], table["base"], strict=True))
    assert m["cost.judge_model_calls"] == 2 * distinct_orders and m["cost.judge_cache_hits"] == 0
    assert m["policy.same_as_base_rate"] == pytest.approx((table["policy"] == table["base"]).mean())
    assert m["principle.harm.n"] == EVAL_PROMPTS and m["principle.honest.n"] == EVAL_PROMPTS
    assert (
        m["cost.generation_calls"] == 2 * EVAL_PROMPTS and m["cost.generated_tokens"] > 0
    )  # 1 prompt a shard
    for model in ("base", "policy"):
        assert (m[f"generation.{model}.sampled"], m[f"generation.{model}.cached"]) == (EVAL_PROMPTS, 0)
        assert m[f"generation.{model}.generate_calls"] == EVAL_PROMPTS
    assert meta["prompts_sampled_vs_cached"].value == {
        "base": {"cached": 0, "sampled": EVAL_PROMPTS},
        "policy": {"cached": 0, "sampled": EVAL_PROMPTS},
    }
    received = m["cost.human_labels_received"]
    assert received >= 1 and m["cost.human_labels_requested"] >= received
    tokens = m["cost.generation_prompt_tokens"] + m["cost.judge_prompt_tokens"]
    assert m["cost.estimated"] == pytest.approx(tokens / 1000 + 0.5 * received)
    assert m["reward.n"] == EVAL_PROMPTS and 0 <= m["reward.policy_higher_rate"] <= 1
    assert 0 <= m["quality.reward_hh_accuracy"] <= 1 and m["quality.reward_hh_n"] > 0
    assert "length.ratio" in m and "refusal.red-team.policy" in m
    # Length control needs 20 prompts: n/a here, beside the raw rate; lengths in the policy's tokens.
    assert m["judge.lc_n"] == EVAL_PROMPTS and "judge.lc_win_rate" not in m
    assert run.data.tags["judge.lc_reason"] == "n/a: 3 prompts, 20 needed"
    assert (
        m["length.policy.tokens_mean"] > 0 and run.data.tags["length.unit"] == "smollm2-135m-instruct tokens"
    )
    # The embedded SmolLM2 judges its own fine-tune: said so; without a reference, not measured.
    assert run.data.tags["judge.self_preference"] == "same model" and m["self_preference.same_family"] == 1.0
    assert run.data.tags["self_preference.status"] == "not measured" and "self_preference.n" not in m
    assert meta["self_judge"].value == "same model"
    assert (
        run.data.tags["dagster.partition.blend"] == "hh-baseline"
        and run.data.tags["alignment.trained"] == "true"
    )
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)} | {
        a.path for d in ("plots", "tables") for a in client.list_artifacts(run.info.run_id, d)
    }
    assert {
        "summary.md",
        "plots/win_rates.png",
        "tables/evals.parquet",
        "tables/win_rates.parquet",
    } <= artifacts
    assert meta["win_rates_plot"].value.startswith("![policy vs base")

    # Same policy, same greedy replies: the second run's replies and judgments all come from the caches.
    gen = GenerateCalls(monkeypatch)
    evals_config = {"ops": {"evals": RUN_CONFIG["ops"]["evals"]}}

    def run_evals(**kwargs):
        return materialize(
            assets,
            selection=[AssetKey("evals")],
            partition_key=key,
            instance=instance,
            resources=resources,
            run_config=evals_config,
            **kwargs,
        )

    def run_metrics(result) -> dict[str, float]:
        return client.get_run(
            result.asset_materializations_for_node("evals")[0].metadata["mlflow_run_id"].value
        ).data.metrics

    again = run_evals()
    m2 = run_metrics(again)
    assert gen.calls == [] and m2["cost.generation_calls"] == 0
    for model in ("base", "policy"):
        assert (m2[f"generation.{model}.sampled"], m2[f"generation.{model}.cached"]) == (0, EVAL_PROMPTS)
        assert m2[f"generation.{model}.generate_calls"] == 0
    assert m2["cost.judge_model_calls"] == 0 and m2["cost.judge_cache_hits"] == 2 * 2 * EVAL_PROMPTS
    assert m2["judge.win_rate"] == m["judge.win_rate"]
    pd.testing.assert_frame_equal(again.output_for_node("evals"), table)

    # Crash-resume: with no generations cached, a generate that fails on its 5th call (the base's 3 shards
    # and the policy's first are done) kills the run; the rerun generates only the policy's last 2 shards.
    shutil.rmtree(Path(settings.root) / "cache" / "generations")
    gen.fail_after = 4
    crashed = run_evals(raise_on_error=False)
    assert not crashed.success and gen.calls == ["base"] * EVAL_PROMPTS + ["policy"]
    assert (
        len(list((Path(settings.root) / "cache" / "generations").rglob("shard-*.parquet")))
        == EVAL_PROMPTS + 1
    )
    gen.calls, gen.fail_after = [], None
    resumed = run_evals()
    m3 = run_metrics(resumed)
    assert gen.calls == ["policy"] * (EVAL_PROMPTS - 1) and m3["cost.generation_calls"] == EVAL_PROMPTS - 1
    assert (m3["generation.base.sampled"], m3["generation.base.cached"]) == (0, EVAL_PROMPTS)
    assert (m3["generation.policy.sampled"], m3["generation.policy.cached"]) == (EVAL_PROMPTS - 1, 1)
    assert (
        m3["generation.base.generate_calls"] == 0
        and m3["generation.policy.generate_calls"] == EVAL_PROMPTS - 1
    )
    # Resumed replies are the uninterrupted run's: every judgment comes from the cache, the table is equal.
    assert m3["cost.judge_model_calls"] == 0
    pd.testing.assert_frame_equal(resumed.output_for_node("evals"), table)

    # Self-preference where a reference exists: the policy's own replies against the humans' preferred HH
    # replies, judged by this judge and by the hh-baseline blend's MiniLM reward model (another family); with
    # the length control's minimum lowered to the 3 prompts, the controlled rate is a number.
    measured = materialize(
        assets,
        selection=[AssetKey("evals")],
        partition_key=key,
        instance=instance,
        resources=resources,
        run_config={
            "ops": {
                "evals": {
                    "config": {
                        **RUN_CONFIG["ops"]["evals"]["config"],
                        "lc_min_prompts": EVAL_PROMPTS,
                        "self_preference_prompts": 2,
                        "self_preference_reference": f"reward_model/{c.partition_key}/hh-baseline/model",
                    }
                }
            }
        },
    )
    assert measured.success
    mrun = client.get_run(
        measured.asset_materializations_for_node("evals")[0].metadata["mlflow_run_id"].value
    )
    m4, tags = mrun.data.metrics, mrun.data.tags
    assert (
        tags["self_preference.status"] == "measured"
        and "preference model reward_model/" in tags["self_preference.reason"]
    )
    assert m4["self_preference.n"] + m4["self_preference.left_out"] == 2
    assert m4["generation.policy_self.sampled"] == 2 and m4["cost.judge_model_calls"] > 0  # eval pairs cached
    assert 0 <= m4["judge.lc_win_rate"] <= 1 and m4["judge.lc_ci_low"] <= m4["judge.lc_ci_high"]
    assert m4["judge.win_rate"] == m["judge.win_rate"]
