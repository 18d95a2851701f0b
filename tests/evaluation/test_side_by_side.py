"""The comparison over constitution x blend from a real MLflow store (SQLite) holding evals runs logged as
the evals asset logs them: newest finished run per partition, failed and other assets' runs left out; the
comparison asset on a real Dagster instance and the `compare` CLI read the same table."""

import time
from pathlib import Path

import pytest
from dagster import DagsterInstance, MultiPartitionKey, materialize

from alignment_dagster.assets.comparison import comparison
from alignment_dagster.cli import main
from alignment_dagster.core.values import write_value
from alignment_dagster.evaluation.side_by_side import comparison_table, format_table, latest_eval_runs
from alignment_dagster.resources.storage_io import StorageResource
from alignment_dagster.resources.tracking import MLflowTracking
from alignment_dagster.specs.constitution import ConstitutionVersion, parse_constitution

CONSTITUTION = """\
name: cai
principles:
  - id: harm
    text: Choose the less harmful response.
    weight: 1
"""


def _log(
    tracking: MLflowTracking,
    asset: str,
    constitution: str,
    blend: str,
    metrics: dict,
    fail: bool = False,
    trained: str = "true",
    tags: dict | None = None,
) -> None:
    key = MultiPartitionKey({"constitution": constitution, "blend": blend})
    try:
        with tracking.start_run(
            dagster_run_id=f"run-{time.monotonic_ns()}",
            job_name="blend_pipeline",
            asset_key=asset,
            partition_key=key,
            tags={"alignment.trained": trained, **(tags or {})},
        ) as run:
            run.log_metrics(metrics)
            if fail:
                raise RuntimeError("step failed")
    except RuntimeError:
        pass
    time.sleep(0.01)  # distinct start times: "newest" must be well defined


@pytest.fixture
def tracking(tmp_path: Path) -> MLflowTracking:
    t = MLflowTracking(
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_location=str(tmp_path / "art")
    )
    _log(
        t, "evals", "cai-1111", "hybrid", {"judge.n": 4, "judge.win_rate": 0.25, "cost.estimated": 9.0}
    )  # superseded
    _log(
        t,
        "evals",
        "cai-1111",
        "hybrid",
        {
            "judge.n": 4,
            "judge.win_rate": 0.5,
            "judge.win_ci_low": 0.15,
            "judge.win_ci_high": 0.85,
            "cost.estimated": 2.0,
        },
        tags={
            "dataset.version": "d-hybrid-2",
            "policy.model": "models:/policy-cai-1111-hybrid/1",
            "reward.model": "models:/reward-cai-1111-hybrid/1",
            "alignment.stale": "true",
        },
    )
    _log(
        t,
        "evals",
        "cai-1111",
        "human-only",
        {
            "judge.n": 4,
            "judge.win_rate": 0.75,
            "judge.win_ci_low": 0.3,
            "judge.win_ci_high": 0.95,
            "cost.estimated": 3.0,
            "reward.mean_diff": -0.5,
            "judge.lc_win_rate": 0.625,
        },
        tags={"judge.self_preference": "same model"},
    )
    _log(
        t,
        "evals",
        "safe-2222",
        "hybrid",
        {
            "judge.n": 4,
            "judge.win_rate": 0.25,
            "judge.win_ci_low": 0.05,
            "judge.win_ci_high": 0.7,
            "cost.estimated": 1.0,
            "reward.mean_diff": 0.5,
        },
    )
    _log(t, "evals", "safe-2222", "human-only", {"cost.estimated": 0.0}, trained="false")
    _log(t, "evals", "safe-2222", "hybrid", {"judge.win_rate": 1.0}, fail=True)  # failed: not a result
    _log(t, "dpo_policy", "safe-2222", "hybrid", {"judge.win_rate": 0.99})  # another asset
    return t


def test_table_from_mlflow(tracking: MLflowTracking) -> None:
    runs = latest_eval_runs(tracking.client, tracking.experiment_id())
    assert list(zip(runs["constitution"], runs["blend"], strict=True)) == [
        ("cai-1111", "human-only"),
        ("cai-1111", "hybrid"),
        ("safe-2222", "human-only"),
        ("safe-2222", "hybrid"),
    ]
    table = comparison_table(runs)
    assert list(table["win"].fillna(-1)) == [0.75, 0.5, -1, 0.25]
    assert list(table["cost"]) == [3.0, 2.0, 0.0, 1.0]
    assert list(table["trained"]) == ["true", "true", "false", "true"]
    assert list(table["n"].fillna(-1)) == [4, 4, -1, 4]
    shown = format_table(table)
    assert list(shown["win"]) == ["0.750*", "0.500", "-", "0.250"]
    assert list(shown["reward diff"]) == ["-0.500", "-", "-", "0.500*"]
    assert list(shown["cost"]) == ["3.000", "2.000", "0.000*", "1.000"]
    assert list(shown["loss"]) == ["-", "-", "-", "-"]  # not logged by these runs
    # What each row was built from; runs without the tags read "".
    assert list(table["stale"]) == ["", "true", "", ""]
    assert list(table["policy model"]) == ["", "models:/policy-cai-1111-hybrid/1", "", ""]
    assert list(table["dataset"]) == ["", "d-hybrid-2", "", ""]
    # The length-controlled win rate beside the raw one; the judge's relation to the policy from the tags.
    assert list(shown["LC win"]) == ["0.625", "-", "-", "-"]
    assert list(shown["self judge"]) == ["same model", "-", "-", "-"]
    assert list(table.columns[:6]) == ["constitution", "blend", "trained", "self judge", "n", "same as base"]


def test_comparison_asset_and_cli(
    tracking: MLflowTracking, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    storage = StorageResource(base_uri=str(tmp_path / "root"))
    first = parse_constitution(CONSTITUTION, "cai.yaml")
    second = parse_constitution(
        CONSTITUTION.replace("weight: 1", "weight: 2") + "  - id: honest\n    text: Be honest.\n", "cai.yaml"
    )
    versions = [ConstitutionVersion.of(c, "cai.yaml", b"") for c in (first, second)]
    for version in versions:
        write_value(storage.open(), f"constitution/{version.partition_key}", version)
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("constitution", [v.partition_key for v in versions])
        res = materialize([comparison], instance=instance, resources={"mlflow": tracking, "storage": storage})
    assert res.success
    table = res.output_for_node("comparison")
    assert len(table) == 4 and list(table["win"].fillna(-1)) == [0.75, 0.5, -1, 0.25]
    meta = res.asset_materializations_for_node("comparison")[0].metadata
    assert meta["partitions"].value == 4
    # What changed between the two versions of the same name, in the order they were added.
    changes = (
        f"| {versions[1].partition_key} | {versions[0].partition_key} | added honest; harm weight 1 -> 2 |"
    )
    assert changes in meta["table"].value, meta["table"].value
    assert "0.750*" in meta["table"].value and meta["plot"].value.startswith(
        "![evals comparison](data:image/png"
    )
    found = tracking.client.search_runs(
        [tracking.experiment_id()], filter_string="tags.`dagster.asset_key` = 'comparison'"
    )
    assert len(found) == 1 and found[0].data.metrics["partitions"] == 4
    artifacts = {a.path for a in tracking.client.list_artifacts(found[0].info.run_id)}
    assert "comparison.md" in artifacts

    capsys.readouterr()
    assert main(["compare", "--tracking-uri", tracking.tracking_uri]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[0].split()[:6] == ["constitution", "blend", "trained", "self", "judge", "n"]
    assert lines[1].split()[:9] == [
        "cai-1111",
        "human-only",
        "true",
        "same",
        "model",
        "4",
        "-",
        "0.750*",
        "0.625",
    ]
    assert len(lines) == 5
    assert main(["compare", "--tracking-uri", tracking.tracking_uri, "--experiment", "nope"]) == 1
