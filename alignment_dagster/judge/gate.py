"""The judge signal gate: is the judge's agreement with humans significantly above chance?

Plain functions; the `judge_signal` asset check reports them and `preference_dataset` refuses AI-sourced
blends where the gate fails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from alignment_dagster.data.pairs import HELDOUT
from alignment_dagster.human.agreement import aggregate_labels, cohen_kappa


def binomial_sf(k: int, n: int, p: float = 0.5) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exact (log-space, stable for n in the thousands)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    logs = [
        math.lgamma(n + 1)
        - math.lgamma(i + 1)
        - math.lgamma(n - i + 1)
        + i * math.log(p)
        + (n - i) * math.log1p(-p)
        for i in range(k, n + 1)
    ]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(x - top) for x in logs))


@dataclass(frozen=True)
class GateResult:
    verdict: Literal["pass", "fail", "undecided"]
    n: int
    agreements: int
    agreement: float
    p_value: float
    alpha: float
    min_n: int

    @property
    def reason(self) -> str:
        if self.verdict == "undecided":
            return (
                f"only {self.n} judge-human comparisons, {self.min_n} needed to decide: ask for more "
                "audit labels"
            )
        word = "significantly" if self.verdict == "pass" else "not significantly"
        return (
            f"judge-human agreement {self.agreement:.3f} on n={self.n} is {word} above chance "
            f"(one-sided binomial p={self.p_value:.3g}, alpha={self.alpha})"
        )


def signal_gate(agreements: int, n: int, *, alpha: float = 0.05, min_n: int = 30) -> GateResult:
    """Is judge-human agreement above chance (0.5)? Too few comparisons is 'undecided', not pass or fail."""
    p_value = binomial_sf(agreements, n) if n else 1.0
    agreement = agreements / n if n else float("nan")
    if n < min_n:
        verdict = "undecided"
    else:
        verdict = "pass" if p_value < alpha else "fail"
    return GateResult(verdict, n, agreements, agreement, p_value, alpha, min_n)


GATE_COLUMNS = ["pair_id", "judge", "human", "source", "agree"]


def gate_comparisons(
    prefs: pd.DataFrame, human: pd.DataFrame, audit_pair_ids, known_labels: pd.DataFrame
) -> pd.DataFrame:
    """The judge-vs-human comparisons the signal gate counts, one row per pair.

    Reference labels come from two unbiased samples only: the human majority on the audit slice (drawn by
    hash, blind to confidence) and the known labels of imported pairs (not chosen by the judge at all).
    Budget-routed pairs are left out: they were picked for low confidence and would bias the estimate. An
    audit label wins over a known label for the same pair; human ties and pairs without an A/B reference are
    left out.

    Known labels count from the held-out part only (`split == heldout`; a table without the column predates
    the split): the training part trains blends and a preference model, so it cannot test them.

    The judge side is its *forced* lean, the side of the debiased p_a, on every pair including abstentions:
    the gate asks whether the judge has any signal, and a judge that abstains everywhere must not escape the
    test by having no labels. p_a exactly 0.5 leans nowhere and counts as a disagreement. The exception is a
    preference model abstaining with `trained_on` (it was trained on the pair's prompt): left out, since its
    lean there would measure memory, not signal.
    """
    ref: dict[str, tuple[str, str]] = {}
    known = known_labels[known_labels["label"].isin(["A", "B"])] if len(known_labels) else known_labels
    if "split" in known:
        known = known[known["split"] == HELDOUT]
    for pid, label in zip(known.get("pair_id", []), known.get("label", []), strict=True):
        ref[pid] = (label, "known")
    audit = set(audit_pair_ids)
    if len(human) and audit:
        agg = aggregate_labels(human[human["pair_id"].isin(audit)])
        for pid, choice in zip(agg["pair_id"], agg["choice"], strict=True):
            if choice in ("A", "B"):
                ref[pid] = (choice, "audit")
    rows = []
    reasons = prefs["abstain_reason"] if "abstain_reason" in prefs else pd.Series(None, index=prefs.index)
    for pid, p_a, reason in zip(prefs["pair_id"], prefs["p_a"], reasons, strict=True):
        if pid not in ref or reason == "trained_on":
            continue
        lean = "A" if p_a > 0.5 else "B" if p_a < 0.5 else "none"
        label, source = ref[pid]
        rows.append({"pair_id": pid, "judge": lean, "human": label, "source": source, "agree": lean == label})
    return pd.DataFrame(rows, columns=GATE_COLUMNS)


@dataclass(frozen=True)
class GateReport:
    """The signal gate on one constitution version, with what it rests on and whether it blocks AI labels."""

    gate: GateResult
    kappa: float | None
    n_audit: int  # comparisons from the audit slice
    n_known: int  # comparisons from imported pairs with known labels
    override: str | None  # an explicit reason to use AI labels anyway
    override_source: str | None  # "constitution" or "blend"

    @property
    def verdict(self) -> str:
        return self.gate.verdict

    @property
    def blocks_ai_labels(self) -> bool:
        return self.gate.verdict == "fail" and not self.override

    @property
    def reason(self) -> str:
        text = self.gate.reason
        if self.gate.verdict == "fail":
            text += (
                f"; AI labels used anyway by the {self.override_source} override: {self.override!r}"
                if self.override
                else "; AI-sourced blends are blocked until it passes or a blend/constitution "
                "sets judge_gate_override"
            )
        return text

    def metadata(self) -> dict[str, object]:
        """Flat facts for Dagster metadata: verdict, reason, the numbers, the override."""
        numbers = {
            k: float(v) if isinstance(v, float) else v for k, v in self.metrics().items() if v is not None
        }
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            **numbers,
            "override": self.override or "",
            "blocks_ai_labels": self.blocks_ai_labels,
        }

    def metrics(self) -> dict[str, float | int | None]:
        g = self.gate
        return {
            "n": g.n,
            "agreements": g.agreements,
            "agreement": None if g.n == 0 else g.agreement,
            "p_value": g.p_value,
            "kappa": self.kappa,
            "n_audit": self.n_audit,
            "n_known": self.n_known,
            "alpha": g.alpha,
            "min_n": g.min_n,
        }


def judge_gate(
    comparisons: pd.DataFrame,
    *,
    alpha: float = 0.05,
    min_n: int = 30,
    override: str | None = None,
    override_source: str | None = None,
) -> GateReport:
    """`signal_gate` on `gate_comparisons`, with Cohen's kappa (judge lean A/B/none vs human A/B)."""
    n = len(comparisons)
    k = int(comparisons["agree"].sum()) if n else 0
    kappa = (
        cohen_kappa(list(comparisons["judge"]), list(comparisons["human"]), ["A", "B", "none"]) if n else None
    )
    override = override.strip() if override and override.strip() else None
    return GateReport(
        signal_gate(k, n, alpha=alpha, min_n=min_n),
        kappa,
        int((comparisons["source"] == "audit").sum()) if n else 0,
        int((comparisons["source"] == "known").sum()) if n else 0,
        override,
        override_source if override else None,
    )


def gate_for_version(
    prefs: pd.DataFrame,
    edge_cases: pd.DataFrame,
    human: pd.DataFrame,
    known_labels: pd.DataFrame,
    alpha: float,
    min_n: int,
    constitution_override: str | None = None,
    blend_override: str | None = None,
) -> GateReport:
    """The gate of one constitution version from its stored assets: audit slice = edge_cases rows with audit.

    The constitution's override comes first (it covers every blend of the version); a blend's override only
    that blend.
    """
    audit = edge_cases.loc[edge_cases["audit"].astype(bool), "pair_id"] if len(edge_cases) else []
    comparisons = gate_comparisons(prefs, human, audit, known_labels)
    for source, text in (("constitution", constitution_override), ("blend", blend_override)):
        if text and text.strip():
            return judge_gate(comparisons, alpha=alpha, min_n=min_n, override=text, override_source=source)
    return judge_gate(comparisons, alpha=alpha, min_n=min_n)
