"""Judge-human calibration on the audit slice: agreement, Cohen's kappa, reliability by confidence.

Measure on the audit slice (`edge_cases.audit == True`): it is drawn at random from the pairs the judge
labelled, so its agreement estimates the judge's agreement with humans on *all* labelled pairs. The
budget-routed pairs were chosen for low confidence and would understate it.

Handling of non-A/B outcomes (both are counted in the report, neither enters agreement or kappa):
* a pair whose human majority is "tie" (including A/B splits, see `human.majority`) has no side to agree
  with, so it is left out;
* a pair the judge abstained on has no AI label; the audit is drawn from labelled pairs only, so this
  happens only when the caller passes other pairs.
Cohen's kappa is then computed on the 2x2 A/B table, which corrects raw agreement for position or
side preferences shared by chance (e.g. both sides saying "A" 70% of the time).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd

from alignment_dagster.evaluation.metrics import wilson_interval
from alignment_dagster.human.agreement import aggregate_labels, cohen_kappa
from alignment_dagster.judge.quality import first_position_win_rate

DEFAULT_BUCKETS: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
RELIABILITY_COLUMNS = [
    "bucket",
    "lo",
    "hi",
    "n",
    "n_agree",
    "agreement",
    "agreement_lo",
    "agreement_hi",
    "mean_confidence",
    "expected_agreement",
]


@dataclass(frozen=True)
class CalibrationReport:
    n_pairs: int  # pairs considered (the audit slice, or all judged pairs when no slice is given)
    n_with_human: int  # of those, pairs with at least one human label
    n_human_tie: int  # left out: the human majority is "tie"
    n_judge_abstain: int  # left out: the judge abstained
    n_compared: int  # A/B on both sides: the base of agreement and kappa
    agreement: float | None
    agreement_ci: tuple[float, float] | None  # 95% Wilson interval
    kappa: float | None
    table: pd.DataFrame  # reliability by confidence bucket, columns RELIABILITY_COLUMNS

    def metrics(self) -> dict[str, float | int | None]:
        """Flat numbers for MLflow / Dagster metadata."""
        lo, hi = self.agreement_ci if self.agreement_ci else (None, None)
        return {
            "n_pairs": self.n_pairs,
            "n_with_human": self.n_with_human,
            "n_human_tie": self.n_human_tie,
            "n_judge_abstain": self.n_judge_abstain,
            "n_compared": self.n_compared,
            "agreement": self.agreement,
            "agreement_lo": lo,
            "agreement_hi": hi,
            "kappa": self.kappa,
        }


def _bucket_labels(edges: Sequence[float]) -> list[str]:
    """Interval notation that says which edge belongs where: [0, 0.2), ..., [0.8, 1]."""
    n = len(edges) - 1
    return [
        f"[{lo:g}, {hi:g}{']' if i == n - 1 else ')'}"
        for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=False))
    ]


def reliability_table(compared: pd.DataFrame, edges: Sequence[float] = DEFAULT_BUCKETS) -> pd.DataFrame:
    """Agreement by judge-confidence bucket from rows with confidence, p_chosen and agree (bool).

    Buckets are [lo, hi) except the last, which includes its upper edge (confidence 1.0). Every bucket is
    listed, empty ones with n = 0 and NaN rates. expected_agreement is the judge's own claim, the mean
    p_chosen: a calibrated judge has agreement close to it in every bucket.
    """
    if len(edges) < 2 or any(b <= a for a, b in zip(edges[:-1], edges[1:], strict=True)):
        raise ValueError(f"bucket edges must be increasing, got {list(edges)}")
    rows = []
    last = len(edges) - 2
    for i, (label, lo, hi) in enumerate(zip(_bucket_labels(edges), edges[:-1], edges[1:], strict=True)):
        confidence = compared["confidence"]
        in_bucket = compared[(confidence >= lo) & ((confidence <= hi) if i == last else (confidence < hi))]
        n = len(in_bucket)
        k = int(in_bucket["agree"].sum()) if n else 0
        ci = wilson_interval(k, n) if n else (float("nan"), float("nan"))
        rows.append(
            {
                "bucket": label,
                "lo": float(lo),
                "hi": float(hi),
                "n": n,
                "n_agree": k,
                "agreement": k / n if n else float("nan"),
                "agreement_lo": ci[0],
                "agreement_hi": ci[1],
                "mean_confidence": float(in_bucket["confidence"].mean()) if n else float("nan"),
                "expected_agreement": float(in_bucket["p_chosen"].mean()) if n else float("nan"),
            }
        )
    return pd.DataFrame(rows, columns=RELIABILITY_COLUMNS)


def _human_majority(human: pd.DataFrame) -> pd.DataFrame:
    """Per-pair human choice: aggregated from raw human_labels, or taken as is when already one per pair."""
    if "annotator" in human.columns:
        return aggregate_labels(human)[["pair_id", "choice"]]
    if human["pair_id"].duplicated().any():
        raise ValueError("human choices: several rows per pair_id but no annotator column to aggregate by")
    return human[["pair_id", "choice"]]


def judge_human_agreement(
    prefs: pd.DataFrame,
    human: pd.DataFrame,
    audit_pair_ids: Iterable[str] | None = None,
    buckets: Sequence[float] = DEFAULT_BUCKETS,
) -> CalibrationReport:
    """Agreement of the judge's per-pair labels with the human majority.

    `prefs`: per-pair ai_preferences (pair_id, label, confidence; p_chosen if present, else (1+confidence)/2).
    `human`: the human_labels contract (aggregated here by majority) or one choice per pair_id.
    `audit_pair_ids`: restrict to the audit slice (recommended; see the module docstring). Audit pairs
    without a human label yet are counted in n_pairs but not in n_with_human.
    """
    p = prefs[["pair_id", "label", "confidence"]].copy()
    p["p_chosen"] = prefs["p_chosen"] if "p_chosen" in prefs.columns else (1.0 + prefs["confidence"]) / 2.0
    if audit_pair_ids is not None:
        wanted = set(audit_pair_ids)
        missing = sorted(wanted - set(p["pair_id"]))
        if missing:
            raise ValueError(
                f"audit pair(s) without an AI preference, e.g. {missing[0]!r} ({len(missing)} in all)"
            )
        p = p[p["pair_id"].isin(wanted)]
    merged = p.merge(_human_majority(human).rename(columns={"choice": "human"}), on="pair_id", how="inner")
    judge_abstain = merged["label"] == "abstain"
    human_tie = merged["human"] == "tie"
    compared = merged[~judge_abstain & ~human_tie].copy()
    compared["agree"] = compared["label"] == compared["human"]
    n = len(compared)
    k = int(compared["agree"].sum())
    return CalibrationReport(
        n_pairs=len(p),
        n_with_human=len(merged),
        n_human_tie=int((human_tie & ~judge_abstain).sum()),
        n_judge_abstain=int(judge_abstain.sum()),
        n_compared=n,
        agreement=k / n if n else None,
        agreement_ci=wilson_interval(k, n) if n else None,
        kappa=cohen_kappa(list(compared["label"]), list(compared["human"]), ["A", "B"]),
        table=reliability_table(compared, buckets),
    )


def reliability_plot(table: pd.DataFrame, title: str = "Judge reliability on the audit slice") -> bytes:
    """A reliability diagram as PNG bytes: observed agreement (Wilson 95% bars) against the judge's
    expected agreement per confidence bucket, with the diagonal a calibrated judge would follow."""
    # The object API with the Agg canvas: no pyplot global state, safe in threads and on headless machines.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([0.5, 1.0], [0.5, 1.0], linestyle="--", color="grey", label="calibrated")
    filled = table[table["n"] > 0]
    if len(filled):
        yerr = [filled["agreement"] - filled["agreement_lo"], filled["agreement_hi"] - filled["agreement"]]
        ax.errorbar(
            filled["expected_agreement"],
            filled["agreement"],
            yerr=yerr,
            fmt="o-",
            capsize=3,
            label="observed (95% CI)",
        )
        for row in filled.itertuples():
            ax.annotate(
                f"{row.bucket}\nn={row.n}",
                (row.expected_agreement, row.agreement),
                textcoords="offset points",
                xytext=(6, -12),
                fontsize=7,
            )
    else:
        ax.text(0.75, 0.5, "no audit pairs with human labels yet", ha="center", fontsize=9)
    ax.set_xlim(0.45, 1.02)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("judge's expected agreement (mean p_chosen)")
    ax.set_ylabel("agreement with humans")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def agreement_metrics(
    principles: pd.DataFrame, pairs: pd.DataFrame, labels: pd.DataFrame, responses: pd.DataFrame | None = None
) -> dict[str, float]:
    """Judge-vs-human figures on pairs with a known A/B label.

    agreement: debiased labels vs humans, abstentions excluded; coverage: share not abstained;
    agreement_forced: the debiased p_a's side on every pair (ties at 0.5 count as misses);
    agreement_single_order: forward order only (weighted p_a_forward), no debiasing, no abstention;
    position_consistency: share of principle votes where both orders agree; first_position_win_rate: share
    of judge prompts (both orders) won by the reply shown first; shorter_reply_agreement: the baseline
    "prefer the shorter reply" on the same pairs (when `responses` is given).
    """
    human = labels[labels["label"].isin(["A", "B"])].set_index("pair_id")["label"]
    judged = pairs.set_index("pair_id").loc[human.index]
    labelled = judged[judged["label"].isin(["A", "B"])]
    n = len(judged)
    forced = judged["p_a"].map(lambda p: "A" if p > 0.5 else "B" if p < 0.5 else "tie")
    votes = principles[principles["pair_id"].isin(human.index)]
    weighted_fwd = (votes["p_a_forward"] * votes["weight"]).groupby(votes["pair_id"]).sum() / votes.groupby(
        "pair_id"
    )["weight"].sum()
    single = weighted_fwd.loc[human.index].map(lambda p: "A" if p > 0.5 else "B" if p < 0.5 else "tie")
    out = {
        "n": n,
        "agreement": float((labelled["label"] == human.loc[labelled.index]).mean())
        if len(labelled)
        else float("nan"),
        "coverage": len(labelled) / n if n else float("nan"),
        "agreement_forced": float((forced == human).mean()) if n else float("nan"),
        "agreement_single_order": float((single == human).mean()) if n else float("nan"),
        "position_consistency": float(votes["order_consistent"].mean()) if len(votes) else float("nan"),
        "first_position_win_rate": first_position_win_rate(votes),
    }
    if responses is not None:
        r = responses.set_index("pair_id").loc[human.index]
        shorter = (r["response_a"].str.len() < r["response_b"].str.len()).map({True: "A", False: "B"})
        out["shorter_reply_agreement"] = float((shorter == human).mean()) if n else float("nan")
    return out
