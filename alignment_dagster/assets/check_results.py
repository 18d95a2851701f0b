"""What the label checks (`judge_signal`, `length_bias`) share: a verdict report as an asset check result.
Defines no asset."""

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, MetadataValue


def verdict_result(
    context: AssetCheckExecutionContext, title: str, report, severity: AssetCheckSeverity
) -> AssetCheckResult:
    """`report` (a verdict, a reason and its metadata) as a check that passes on "pass", logged once."""
    context.log.info(f"{title}: {report.verdict}: {report.reason}")
    return AssetCheckResult(
        passed=report.verdict == "pass",
        severity=severity,
        description=report.reason,
        metadata={**report.metadata(), "summary": MetadataValue.md(f"**{report.verdict}**: {report.reason}")},
    )
