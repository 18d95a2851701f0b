"""When each automated asset runs (Dagster declarative automation), and the sensor that evaluates it.

A new constitution version or blend, or new human labels, flow by themselves from `human_labels` / `blend` to
`comparison`. The labels below are what the UI's automation view shows for each condition, so it says why an
asset will or will not run.

* `revisions`, `sft_dataset` (Constitutional AI phase 1): eager, per constitution version; `sft_policy` when
  its SFT rows change, `sft_evals` after it trained.
* `preference_dataset`: eager: whenever an input updates (no model calls, cheap).
* `reward_model`, `dpo_policy`: only when the partition is new or its preference rows' data version changed
  (a re-run that changed no row changes no version); inside, the blend's retrain policy decides whether the
  change is big enough to train, and identical rows reuse the trained weights. `dpo_policy` also reruns when
  `sft_policy` changed (only blends with `start_from: sft` read it; the others find their training identical
  and materialize nothing), and waits while `sft_policy` is running.
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


def refresh_eagerly(optional: str | None = None) -> AutomationCondition:
    """Eager; a dep that only some partitions read (`optional`) may be missing, and its updates still
    count."""
    if optional is None:
        return AutomationCondition.eager()
    missing = AutomationCondition.any_deps_missing().ignore(AssetSelection.assets(optional))
    return AutomationCondition.eager().replace("any_deps_missing", missing)


def _ready_unless(start: str) -> AutomationCondition:
    """Ready though `start` is missing: only some partitions read it (blends with `start_from: sft`). One
    that runs before it lands leaves a card-only model and runs again when `start` changes; the others find
    their training identical then and materialize nothing."""
    return (
        ~AutomationCondition.any_deps_missing().ignore(AssetSelection.assets(start))
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
    )


def retrain_when_rows_change(
    rows: str = "preference_dataset", start: str | None = None
) -> AutomationCondition:
    """Train a new partition, or when its training rows (`rows`) or the model it may start from (`start`)
    changed their data version."""
    what = f"its {rows} rows" + (f" or the {start} it may start from" if start else "")
    changed = (
        AutomationCondition.any_deps_match(AutomationCondition.data_version_changed())
        .allow(AssetSelection.assets(rows, *([start] if start else [])))
        .with_label(f"{what} changed")
    )
    trigger = (
        (AutomationCondition.newly_missing() | changed)
        .since_last_handled()
        .with_label(f"new partition, or {what} changed since it last ran")
    )
    ready = _ready_unless(start) if start else _ready()
    return (trigger & ready).with_label(f"train when {what} change")


def evaluate_after_training(models: tuple[str, ...] = ("dpo_policy", "reward_model")) -> AutomationCondition:
    trained = (
        AutomationCondition.any_deps_match(
            AutomationCondition.newly_updated() | AutomationCondition.will_be_requested()
        )
        .allow(AssetSelection.assets(*models))
        .with_label(f"{' or '.join(models)} updated")
    )
    return (trained.since_last_handled() & _ready()).with_label("evaluate after training")


def revise_new_versions() -> AutomationCondition:
    """`revisions`: a new constitution version (or a changed prompt pool) starts phase 1; unchanged chains
    come from the call cache."""
    return AutomationCondition.eager().with_label("phase 1 for a new constitution version")


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
