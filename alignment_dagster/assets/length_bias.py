"""`length_bias`: does the judge prefer the longer reply more often than the humans do on the same pairs?

An asset check on `ai_preferences` per constitution version, after `human_labels` (it counts the audit
slice's labels), so, like `judge_signal`, not a blocking check: where the constitution asks for it
(`judge.length_bias.block_ai_labels`), `preference_dataset` recomputes the verdict and refuses AI-sourced
blends.
"""

import pandas as pd
from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, AssetIn, asset_check

from alignment_dagster.assets.check_results import verdict_result
from alignment_dagster.judge.bias import length_bias_for_version
from alignment_dagster.partitions import constitution_partitions
from alignment_dagster.specs.constitution import ConstitutionVersion


@asset_check(
    asset="ai_preferences",
    name="length_bias",
    partitions_def=constitution_partitions,
    additional_ins={
        "constitution": AssetIn(),
        "edge_cases": AssetIn(),
        "human_labels": AssetIn(),
        "known_labels": AssetIn(),
        "response_pairs": AssetIn(),
    },
    description="How often the judge picks the longer reply against how often humans do on the same pairs "
    "(audit slice and known labels; near-equal lengths left out), one-sided exact McNemar test. Fails when "
    "the excess is significant and above judge.length_bias.max_excess (WARN unless the constitution says "
    "error); too few pairs is undecided.",
)
def length_bias(
    context: AssetCheckExecutionContext,
    ai_preferences: pd.DataFrame,
    constitution: ConstitutionVersion,
    edge_cases: pd.DataFrame,
    human_labels: pd.DataFrame,
    known_labels: pd.DataFrame,
    response_pairs: pd.DataFrame,
) -> AssetCheckResult:
    judge = constitution.spec.judge
    report = length_bias_for_version(
        ai_preferences,
        edge_cases,
        human_labels,
        known_labels,
        response_pairs,
        judge.length_bias,
        override=judge.gate.override,
    )
    severity = AssetCheckSeverity.WARN
    if report.verdict == "fail" and judge.length_bias.severity == "error":
        severity = AssetCheckSeverity.ERROR
    return verdict_result(context, "judge length bias", report, severity)
