"""When each automated asset runs (Dagster declarative automation), and the sensor that evaluates it.

A new constitution version or blend, or new human labels, flow by themselves from `human_labels` / `blend` to
`comparison`. The labels below are what the UI's automation view shows for each condition, so it says why an
asset will or will not run.

* `preference_dataset`: eager: whenever an input updates (no model calls, cheap).
* `reward_model`, `dpo_policy`: only when the partition is new or its preference rows' data version changed
  (a re-run that changed no row changes no version); inside, the blend's retrain policy decides whether the
  change is big enough to train, and identical rows reuse the trained weights.
* `evals`: when a training asset of its partition updated.
* `comparison`: when an `evals` partition finished; it never waits for partitions that are missing (a blend
  refused by the judge signal gate has no evals and never will until the gate passes).

A refused or failed partition is not retried until one of its inputs changes again (`since_last_handled`).
"""

from dagster import (
    AssetSelection,
    AutomationCondition,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
)


def _ready() -> AutomationCondition:
    return (
        ~AutomationCondition.any_deps_missing()
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
    )


def refresh_eagerly() -> AutomationCondition:
    return AutomationCondition.eager()


def retrain_when_rows_change() -> AutomationCondition:
    changed = (
        AutomationCondition.any_deps_match(AutomationCondition.data_version_changed())
        .allow(AssetSelection.assets("preference_dataset"))
        .with_label("its preference rows changed")
    )
    trigger = (
        (AutomationCondition.newly_missing() | changed)
        .since_last_handled()
        .with_label("new partition, or its preference rows changed since it last ran")
    )
    return (trigger & _ready()).with_label("train when its preference rows change")


def evaluate_after_training() -> AutomationCondition:
    trained = (
        AutomationCondition.any_deps_match(
            AutomationCondition.newly_updated() | AutomationCondition.will_be_requested()
        )
        .allow(AssetSelection.assets("dpo_policy", "reward_model"))
        .with_label("its reward model or policy updated")
    )
    return (trained.since_last_handled() & _ready()).with_label("evaluate after training")


def compare_when_evals_finish() -> AutomationCondition:
    finished = AutomationCondition.any_deps_match(AutomationCondition.newly_updated()).with_label(
        "an evals partition finished"
    )
    return (
        finished.since_last_handled()
        & ~AutomationCondition.any_deps_match(AutomationCondition.will_be_requested()).with_label(
            "evals about to run"
        )
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
    ).with_label("refresh when evals finish (missing partitions are not waited for)")


# Running by default, and emitting runs rather than backfills: each request is one run per partition, queued
# under the instance's run limits (see `cli.stores`).
automation_sensor = AutomationConditionSensorDefinition(
    "alignment_automation",
    target=AssetSelection.all(),
    default_status=DefaultSensorStatus.RUNNING,
    emit_backfills=False,
    minimum_interval_seconds=15,
    description="Refreshes preference datasets, models, evals and the comparison when their inputs change.",
)
