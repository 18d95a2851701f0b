"""`judge_signal`: the judge health gate, an asset check on `ai_preferences` per constitution version.

It runs after `human_labels` (it needs this version's audit labels), so it cannot be a Dagster `blocking`
check: blocking would make `edge_cases` and `human_labels` wait for it, a cycle, and would stop the human loop
exactly when the judge needs more human labels. The gate blocks where AI labels are used instead:
`preference_dataset` recomputes the same verdict from the same stored inputs and refuses AI-sourced blends
when it fails (see `judge.gate.gate_for_version`).
"""

import pandas as pd
from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, AssetIn, asset_check

from alignment_dagster.assets.check_results import verdict_result
from alignment_dagster.judge.gate import gate_for_version
from alignment_dagster.partitions import constitution_partitions
from alignment_dagster.specs.constitution import ConstitutionVersion


@asset_check(
    asset="ai_preferences",
    name="judge_signal",
    partitions_def=constitution_partitions,
    additional_ins={
        "constitution": AssetIn(),
        "edge_cases": AssetIn(),
        "human_labels": AssetIn(),
        "known_labels": AssetIn(),
    },
    description="Judge-human agreement on the audit slice and known-label pairs, one-sided binomial test "
    "against chance. Fail blocks AI-sourced preference_dataset blends; too few labels is a warning "
    "(undecided).",
)
def judge_signal(
    context: AssetCheckExecutionContext,
    ai_preferences: pd.DataFrame,
    constitution: ConstitutionVersion,
    edge_cases: pd.DataFrame,
    human_labels: pd.DataFrame,
    known_labels: pd.DataFrame,
) -> AssetCheckResult:
    gate = constitution.spec.judge.gate
    report = gate_for_version(
        ai_preferences,
        edge_cases,
        human_labels,
        known_labels,
        gate.alpha,
        gate.min_n,
        constitution_override=gate.override,
    )
    # Undecided is neither: a failed check at WARN severity, shown apart from a real failure.
    severity = AssetCheckSeverity.ERROR if report.verdict == "fail" else AssetCheckSeverity.WARN
    return verdict_result(context, "judge signal gate", report, severity)
