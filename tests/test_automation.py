"""The automation's logic, tick by tick, on a real instance: `evaluate_automation_conditions` over the real
definitions, with upstream materializations recorded as events (no runs), so each tick's requests are exact.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest
from dagster import (
    AssetMaterialization,
    DagsterInstance,
    MultiPartitionKey,
    evaluate_automation_conditions,
)
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from alignment_dagster.core.settings import Settings
from alignment_dagster.definitions import build_definitions

SHARED = ["prompt_pool", "response_pairs", "known_labels"]
BY_CONSTITUTION = ["constitution", "ai_preferences", "ai_principle_votes", "edge_cases", "human_labels"]
TRAINING = ["reward_model", "dpo_policy"]
PHASE_ONE = ["revisions", "sft_dataset", "sft_policy", "sft_evals"]
BLENDS = ["ai-only", "hh-baseline", "hybrid"]


def key(constitution: str, blend: str) -> MultiPartitionKey:
    return MultiPartitionKey({"constitution": constitution, "blend": blend})


class Ticks:
    """The automation of the real definitions on one instance, evaluated tick after tick."""

    def __init__(self, defs, instance: DagsterInstance):
        self.defs, self.instance, self.cursor = defs, instance, None

    def __call__(self) -> dict[str, set[str]]:
        """{asset: partition keys requested} for one tick."""
        result = evaluate_automation_conditions(self.defs, self.instance, cursor=self.cursor)
        self.cursor = result.cursor
        requested = {}
        for asset in self.defs.resolve_asset_graph().get_all_asset_keys():
            partitions = result.get_requested_partitions(asset)
            if partitions:
                requested[asset.to_user_string()] = {str(p) for p in partitions}
        return requested

    def materialize(self, asset: str, partitions: Iterable = (None,), version: str | None = None) -> None:
        tags = {DATA_VERSION_TAG: version} if version else None
        for partition in partitions:
            self.instance.report_runless_asset_event(
                AssetMaterialization(asset, partition=partition and str(partition), tags=tags)
            )

    def new_constitution(self, name: str) -> None:
        """What a constitution run leaves: the partition and everything up to `human_labels`."""
        self.instance.add_dynamic_partitions("constitution", [name])
        for asset in BY_CONSTITUTION:
            self.materialize(asset, [name])


@pytest.fixture
def ticks(tmp_path: Path, constitutions_dir: Path) -> Ticks:
    settings = Settings.from_env(
        {"ALIGNMENT_ROOT": str(tmp_path / "root"), "ALIGNMENT_CONSTITUTIONS_DIR": str(constitutions_dir)}
    )
    with DagsterInstance.ephemeral() as instance:
        ticks = Ticks(build_definitions(settings), instance)
        assert ticks() == {}  # the initial evaluation requests nothing (a daemon started late stays quiet)
        instance.add_dynamic_partitions("blend", BLENDS)
        for asset in SHARED:
            ticks.materialize(asset)
        ticks.materialize("blend", BLENDS)
        yield ticks


def settled(ticks: Ticks, partitions: list, version: str = "rows-1") -> None:
    """What the runs of one tick leave: each partition's dataset, models and evals, then the comparison."""
    ticks.materialize("preference_dataset", partitions, version=version)
    for asset in TRAINING:
        ticks.materialize(asset, partitions, version=f"{asset}-{version}")
    ticks.materialize("evals", partitions)
    assert ticks() == {"comparison": {"None"}}
    ticks.materialize("comparison")
    assert ticks() == {}


def test_new_constitution_flows_to_the_comparison_and_a_refused_partition_does_not_block_it(ticks) -> None:
    ticks.new_constitution("c1")
    every = {str(key("c1", b)) for b in BLENDS}
    # One run per partition: the dataset and, in the same run, its models and evals (nothing is missing
    # that this tick does not also request); phase 1 in one run for the version. The comparison waits.
    assert ticks() == {
        **{a: every for a in ("preference_dataset", *TRAINING, "evals")},
        **{a: {"c1"} for a in PHASE_ONE},
    }
    # The judge signal gate refuses ai-only: that run fails and leaves nothing; the others finish. A plain
    # eager comparison would wait for ai-only's evals forever; a retrying one would loop.
    settled(ticks, [key("c1", b) for b in ("hh-baseline", "hybrid")])
    assert ticks() == {}


def test_unchanged_rows_do_not_retrain_and_changed_rows_do(ticks) -> None:
    ticks.new_constitution("c1")
    ticks()
    partitions = [key("c1", b) for b in BLENDS]
    settled(ticks, partitions)
    # New human labels that change no training row: preference_dataset reruns and keeps its version.
    ticks.materialize("human_labels", ["c1"])
    assert ticks() == {"preference_dataset": {str(k) for k in partitions}}
    ticks.materialize("preference_dataset", partitions, version="rows-1")
    assert ticks() == {}
    # Rows that changed for hybrid only: only hybrid's models (and then its evals) run.
    ticks.materialize("preference_dataset", [key("c1", "hybrid")], version="rows-2")
    hybrid = {str(key("c1", "hybrid"))}
    assert ticks() == {"reward_model": hybrid, "dpo_policy": hybrid, "evals": hybrid}


def test_an_edited_blend_refreshes_only_its_partitions_and_judges_nothing(ticks) -> None:
    for name in ("c1", "c2"):
        ticks.new_constitution(name)
    ticks()
    settled(ticks, [key(c, b) for c in ("c1", "c2") for b in BLENDS])
    ticks.materialize("blend", ["hybrid"])  # blend_sensor's run for an edited hybrid.yaml
    requested = ticks()
    assert requested == {"preference_dataset": {str(key(c, "hybrid")) for c in ("c1", "c2")}}
    # Nothing partitioned by constitution, where the judge runs, is ever automated.
    assert not set(requested) & set(BY_CONSTITUTION + SHARED)


def test_phase_one_flows_per_version_and_a_new_sft_policy_asks_only_dpo_policy(ticks) -> None:
    ticks.new_constitution("c1")
    ticks()
    partitions = [key("c1", b) for b in BLENDS]
    for asset, version in (("revisions", None), ("sft_dataset", "sft-rows-1"), ("sft_policy", "sft-1")):
        ticks.materialize(asset, ["c1"], version=version)
    ticks.materialize("sft_evals", ["c1"])
    settled(ticks, partitions)
    # New accepted revisions: the SFT policy retrains and its evals follow, in one run. The datasets rerun
    # too (no model calls: a blend may take revision pairs); rows that stay keep their version.
    every = {str(p) for p in partitions}
    ticks.materialize("revisions", ["c1"])
    assert ticks() == {"sft_dataset": {"c1"}}
    ticks.materialize("sft_dataset", ["c1"], version="sft-rows-2")
    assert ticks() == {"sft_policy": {"c1"}, "sft_evals": {"c1"}, "preference_dataset": every}
    ticks.materialize("preference_dataset", partitions, version="rows-1")
    # A new SFT model: every blend's dpo_policy is asked (only those with `start_from: sft` read it; the
    # others find their training identical and materialize nothing, so their evals are skipped in the run).
    # The reward models and the datasets are not asked.
    ticks.materialize("sft_policy", ["c1"], version="sft-2")
    ticks.materialize("sft_evals", ["c1"])
    assert ticks() == {"dpo_policy": every, "evals": every, "comparison": {"None"}}
