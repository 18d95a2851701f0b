"""Comparison of `evals` runs across constitution versions x blends, read back from MLflow."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from alignment_dagster.core.reporting import StageReport, figure_png, markdown_table

EVALS_ASSET = "evals"
# Text columns from each run's tags (shown as they are): whether the judge is the policy's own model/family.
TAG_COLUMNS = {"self judge": "judge.self_preference"}
SFT_EVALS_ASSET = "sft_evals"
# The `blend` of a comparison row for the SFT policy (phase 1): not a blend slug, so never one's key.
SFT_ROW = "sft_policy"


@dataclass(frozen=True)
class Column:
    metric: str  # MLflow metric key of the evals run
    label: str  # column header
    higher_is_better: bool | None  # None: shown, never marked best (context, e.g. cost or n)


KEY_COLUMNS: list[Column] = [
    Column("judge.n", "n", None),
    Column("policy.same_as_base_rate", "same as base", None),
    Column("judge.win_rate", "win", True),
    # At equal reply length (AlpacaEval 2): a judge that rewards verbosity inflates "win", not this.
    Column("judge.lc_win_rate", "LC win", True),
    Column("judge.win_ci_low", "win CI low", True),
    Column("judge.win_ci_high", "win CI high", None),
    Column("judge.loss_rate", "loss", False),
    Column("reward.mean_diff", "reward diff", True),
    Column("refusal.red-team.policy", "refusal red-team", True),
    Column("refusal.helpful.policy", "refusal helpful", False),
    Column("length.ratio", "length ratio", None),
    Column("self_preference.excess", "self pref", None),
    Column("quality.audit_agreement", "judge agree", True),
    Column("quality.audit_kappa", "judge kappa", True),
    Column("quality.reward_hh_accuracy", "RM acc HH", True),
    Column("cost.estimated", "cost", False),
    Column("cost.wall_seconds", "eval s", None),
]


# What each comparison row was built from (tags of its evals run): which rows trained which models, and
# whether a model is older than its dataset because the blend's retrain policy kept it.
VERSION_TAGS = {
    "dataset.version": "dataset",
    "policy.model": "policy model",
    "reward.model": "reward model",
    "alignment.stale": "stale",
}


def _finished_runs(client, experiment_id: str, asset: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`dagster.asset_key` = '{asset}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def latest_eval_runs(client, experiment_id: str) -> pd.DataFrame:
    """The newest FINISHED `evals` run per (constitution, blend), and `sft_evals` run per constitution (blend
    `sft_policy`): one row each, metrics as columns."""
    runs = [(run, None) for run in _finished_runs(client, experiment_id, EVALS_ASSET)]
    runs += [(run, SFT_ROW) for run in _finished_runs(client, experiment_id, SFT_EVALS_ASSET)]
    runs.sort(key=lambda item: -item[0].info.start_time)
    rows, seen = [], set()
    for run, blend in runs:
        tags = run.data.tags
        key = (tags.get("dagster.partition.constitution"), blend or tags.get("dagster.partition.blend"))
        if None in key or key in seen:
            continue
        seen.add(key)
        rows.append(
            {
                "constitution": key[0],
                "blend": key[1],
                "run_id": run.info.run_id,
                "trained": tags.get("alignment.trained", "true"),
                **{label: tags.get(tag, "-") for label, tag in TAG_COLUMNS.items()},
                **{label: tags.get(tag, "") for tag, label in VERSION_TAGS.items()},
                "start_time": run.info.start_time,
                **run.data.metrics,
            }
        )
    df = pd.DataFrame(rows)
    return df.sort_values(["constitution", "blend"]).reset_index(drop=True) if len(df) else df


def best_rows(values: pd.Series, higher_is_better: bool) -> set[int]:
    """Index labels holding the best value (all of them on a tie); none when fewer than two real values."""
    real = values.dropna()
    if len(real) < 2 or real.nunique() < 2:
        return set()
    best = real.max() if higher_is_better else real.min()
    return set(real.index[real == best])


def comparison_table(runs: pd.DataFrame, columns: Sequence[Column] = KEY_COLUMNS) -> pd.DataFrame:
    """Key metrics side by side, one row per constitution x blend, numbers as floats (NaN = not measured),
    the judge's relation to the policy first (`TAG_COLUMNS`, "-" where not recorded), then what each row was
    built from (`VERSION_TAGS`, "" where its evals run predates them)."""
    lead = ["constitution", "blend", "trained", *TAG_COLUMNS]
    out = runs.reindex(columns=lead).fillna("-") if len(runs) else pd.DataFrame(columns=lead)
    for col in columns:
        out[col.label] = (
            pd.to_numeric(runs[col.metric], errors="coerce") if col.metric in runs else float("nan")
        )
    for label in VERSION_TAGS.values():
        out[label] = runs[label].fillna("") if label in runs else ""
    return out.reset_index(drop=True)


def format_table(
    table: pd.DataFrame, columns: Sequence[Column] = KEY_COLUMNS, digits: int = 3
) -> pd.DataFrame:
    """Strings for printing: best per metric marked with '*', NaN as '-'."""
    shown = table.copy().astype(object)
    for col in columns:
        if col.label not in table:
            continue
        best = (
            best_rows(table[col.label], col.higher_is_better) if col.higher_is_better is not None else set()
        )
        shown[col.label] = [
            "-"
            if (v is None or (isinstance(v, float) and math.isnan(v)))
            else (f"{int(v)}" if col.label == "n" else f"{v:.{digits}f}") + ("*" if i in best else "")
            for i, v in table[col.label].items()
        ]
    return shown


def comparison_plot(table: pd.DataFrame) -> bytes:
    """Policy win rate vs base per constitution x blend with the 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{c}\n{b}" for c, b in zip(table["constitution"], table["blend"], strict=False)]
    win = table["win"].astype(float)
    low = (win - table["win CI low"].astype(float)).clip(lower=0).fillna(0)
    high = (table["win CI high"].astype(float) - win).clip(lower=0).fillna(0)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(names)), 3.5))
    ax.bar(range(len(names)), win.fillna(0), yerr=[low, high], capsize=4, color="#4c72b0")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(names)), names, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("policy win rate vs base")
    ax.set_title("evals: constitution x blend (95% Wilson CI)")
    fig.tight_layout()
    return figure_png(fig)


def version_changes(versions: Sequence) -> pd.DataFrame:
    """What changed from each constitution version to the previous one of the same name (in the order given:
    the order the versions were added)."""
    rows, last = [], {}
    for version in versions:
        spec = version.spec
        before = last.get(spec.name)
        changes = spec.changes_from(before.spec) if before is not None else ["first version"]
        rows.append(
            {
                "constitution": version.partition_key,
                "previous": before.partition_key if before else "",
                "changes": "; ".join(changes) or "no change of meaning",
            }
        )
        last[spec.name] = version
    return pd.DataFrame(rows, columns=["constitution", "previous", "changes"])


def comparison_report(table: pd.DataFrame, changes: pd.DataFrame | None = None) -> StageReport:
    """The comparison as a report: the table (Parquet in MLflow, marked markdown in both), what changed
    between constitution versions, and the win-rate plot."""
    shown = format_table(table)
    text = markdown_table(shown, max_rows=len(shown), max_chars=40)
    if changes is not None and len(changes):
        text += "\n\n### What changed between constitution versions\n\n" + markdown_table(
            changes, max_rows=len(changes), max_chars=300
        )
    report = StageReport(summary={"partitions": len(table)}, notes={"table": text})
    if changes is not None:
        report.table("version_changes", changes)
    report.detail(
        "columns",
        {**{col.label: col.metric for col in KEY_COLUMNS}, **{k: f"tag {v}" for k, v in TAG_COLUMNS.items()}},
    )
    report.table("comparison", table).text("comparison.md", f"## evals comparison (* = best)\n\n{text}\n")
    if len(table):
        report.plot("comparison", comparison_plot(table), "evals comparison", key="plot")
    return report
