"""Edge-case routing: which AI-judged pairs go to humans, and why. Plain functions, no Dagster.

Two independent selections make up `edge_cases` for one constitution version:

* The **budget** selection spends at most `RoutingSettings.human_budget` *new* human labels where the
  judge is least trustworthy, in tiers (lower tier first; within a tier lowest confidence first, then
  pair_id so the order is total and reproducible):

    0. ``always_human``       the pair's category is listed in ``routing.always_human`` (any AI label)
    1. ``abstain:<reason>``   the judge abstained (order_inconsistent, low_confidence, vote_split, ...)
    2. ``disagreement``       an ensemble of judges disagreed (abstain_reason == "disagreement")
    3. ``low_confidence``     the remaining *labelled* pairs, lowest confidence first, until the budget
                              is spent

  A pair that qualifies for several tiers is routed once, for its first tier. Ensemble disagreement is
  read from ``abstain_reason == "disagreement"`` (what `judge.aggregate.combine_judges` writes); under
  ``ensemble_agreement: majority`` a labelled pair with a dissenting judge carries no marker in the
  contract and competes as a plain labelled pair.

* The **audit** slice is a random ``audit_fraction`` of the pairs the judge *labelled* (A/B, not
  abstained): ``ceil(audit_fraction * n_labelled)`` pairs, taken in the order of
  ``sha256(f"{seed}:{pair_id}")``. The draw looks only at pair ids, never at confidence or routing, so
  judge-human agreement measured on it is free of selection bias. **The audit does not eat into the
  budget**: the budget selection is exactly what it would be with ``audit_fraction = 0``; audit pairs
  the budget does not already send are added on top, so at most ``human_budget + n_audit`` pairs are
  sent. Every audit member carries ``audit = True`` whatever its ``route_reason`` (a low-confidence pair
  that the draw also picked keeps ``route_reason = "low_confidence"``); measure calibration on
  ``audit == True``, not on ``route_reason == "audit"``, or the sample is no longer random.

Pairs that already have a human label from an earlier constitution version (``already_labelled``) are
never sent again, since a human preference between two fixed replies does not depend on the constitution:

* they are skipped by the budget selection (they use no budget and do not appear in the output);
* the audit draw still includes them, so the audit stays a random sample. An audit member that is
  already labelled appears with ``send = False``: its existing label is reused for this version's
  calibration instead of asking again. With a seed that is constant across versions (the default), the
  audit of a new version mostly picks the same pairs as the last one, so most audit labels are reused.

When the judge signal gate (`judge.health`) cannot decide for lack of reference labels, `edge_cases` asks
for ``extra_audit`` more audit pairs (``route_reason = "gate_audit"``, ``audit = True``): the next pairs in
the same hash order, from every judged pair (abstentions included, since the gate tests the judge's lean on
every pair) that is neither in the audit slice already nor in ``extra_audit_exclude`` (pairs whose reference
label is already known). Like the audit slice, they do not use the budget.

Output columns: pair_id, route_reason, priority (0, 1, 2, ... in routing order: budget rows by tier, then
audit-only rows in draw order; lower is more urgent), category, ai_label, confidence, abstain_reason,
audit (bool), send (bool: False only for reused audit labels).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from alignment_dagster.core.reporting import StageReport, value_counts
from alignment_dagster.judge.gate import gate_comparisons
from alignment_dagster.specs.constitution import Constitution, RoutingSettings

EDGE_CASE_COLUMNS = [
    "pair_id",
    "route_reason",
    "priority",
    "category",
    "ai_label",
    "confidence",
    "abstain_reason",
    "audit",
    "send",
]
DEFAULT_AUDIT_SEED = "audit-v1"
_TIER_ALWAYS, _TIER_ABSTAIN, _TIER_DISAGREE, _TIER_LOW = range(4)


def audit_rank_key(pair_id: str, seed: str = DEFAULT_AUDIT_SEED) -> str:
    """The hash that orders pairs for the audit draw (a deterministic, confidence-blind shuffle)."""
    return hashlib.sha256(f"{seed}:{pair_id}".encode()).hexdigest()


def audit_size(n_labelled: int, audit_fraction: float) -> int:
    """ceil(audit_fraction * n_labelled), with float noise removed first (0.05 * 100 is 5, not 6)."""
    return min(n_labelled, math.ceil(round(audit_fraction * n_labelled, 9)))


def draw_audit(
    labelled_pair_ids: Iterable[str], audit_fraction: float, seed: str = DEFAULT_AUDIT_SEED
) -> list[str]:
    """The audit slice, in draw order: the first audit_size(...) pairs by audit_rank_key."""
    ids = sorted(set(labelled_pair_ids), key=lambda pid: audit_rank_key(pid, seed))
    return ids[: audit_size(len(ids), audit_fraction)]


def _tier(label: str, reason: object, category: object, always_human: set[str]) -> tuple[int, str]:
    if isinstance(category, str) and category in always_human:
        return _TIER_ALWAYS, "always_human"
    if label == "abstain":
        if reason == "disagreement":
            return _TIER_DISAGREE, "disagreement"
        return _TIER_ABSTAIN, f"abstain:{reason if isinstance(reason, str) and reason else 'unknown'}"
    return _TIER_LOW, "low_confidence"


def route_edge_cases(
    prefs: pd.DataFrame,
    pairs: pd.DataFrame,
    settings: RoutingSettings,
    already_labelled: Iterable[str] = frozenset(),
    seed: str = DEFAULT_AUDIT_SEED,
    extra_audit: int = 0,
    extra_audit_exclude: Iterable[str] = frozenset(),
) -> pd.DataFrame:
    """Select pairs for human review from per-pair `ai_preferences` (see the module docstring for the rules).

    `pairs` supplies each pair's category (needed for ``always_human``); every pair in `prefs` must be in
    it. `already_labelled` holds pair ids with a human label from an earlier constitution version.
    `seed` fixes the audit draw; keep it constant across versions to reuse audit labels.
    """
    rows = _candidates(prefs, pairs, set(settings.always_human))
    by_id = {r["pair_id"]: r for r in rows}
    done = set(already_labelled)
    budget_rows = sorted(
        (r for r in rows if r["pair_id"] not in done),
        key=lambda r: (r["tier"], r["confidence"], r["pair_id"]),
    )[: settings.human_budget]
    chosen = {r["pair_id"] for r in budget_rows}
    audit = draw_audit(
        [r["pair_id"] for r in rows if r["ai_label"] in ("A", "B")], settings.audit_fraction, seed
    )
    audit_set = set(audit)
    out = [{**r, "audit": r["pair_id"] in audit_set, "send": True} for r in budget_rows]
    out += [
        {**by_id[pid], "route_reason": "audit", "audit": True, "send": pid not in done}
        for pid in audit
        if pid not in chosen
    ]
    if extra_audit > 0:
        skip = audit_set | set(extra_audit_exclude)
        pool = sorted((pid for pid in by_id if pid not in skip), key=lambda pid: audit_rank_key(pid, seed))
        for pid in pool[:extra_audit]:
            if pid in chosen:  # already sent by the budget: its label will count once it is an audit member
                next(r for r in out if r["pair_id"] == pid)["audit"] = True
                continue
            out.append({**by_id[pid], "route_reason": "gate_audit", "audit": True, "send": pid not in done})
    for i, r in enumerate(out):
        r["priority"] = i
    df = pd.DataFrame(out, columns=EDGE_CASE_COLUMNS)
    return df.astype({"priority": "int64", "audit": "bool", "send": "bool", "confidence": "float64"})


def _candidates(prefs: pd.DataFrame, pairs: pd.DataFrame, always: set[str]) -> list[dict]:
    """Every judged pair with its routing tier and reason; refuses prefs that do not match the pairs."""
    missing_cols = {"pair_id", "label", "confidence", "abstain_reason"} - set(prefs.columns)
    if missing_cols:
        raise ValueError(f"ai_preferences: missing column(s) {sorted(missing_cols)}")
    if prefs["pair_id"].duplicated().any():
        dup = prefs.loc[prefs["pair_id"].duplicated(), "pair_id"].iloc[0]
        raise ValueError(f"ai_preferences: pair_id {dup!r} appears more than once")
    categories = dict(zip(pairs["pair_id"], pairs["category"], strict=True)) if len(pairs) else {}
    unknown = [pid for pid in prefs["pair_id"] if pid not in categories]
    if unknown:
        raise ValueError(
            f"ai_preferences: {len(unknown)} pair_id(s) not in response_pairs, e.g. {unknown[0]!r}"
        )
    rows = []
    for rec in prefs.itertuples(index=False):
        category = categories[rec.pair_id]
        tier, reason = _tier(rec.label, rec.abstain_reason, category, always)
        rows.append(
            {
                "pair_id": rec.pair_id,
                "tier": tier,
                "route_reason": reason,
                "category": category if isinstance(category, str) else None,
                "ai_label": rec.label,
                "confidence": float(rec.confidence),
                "abstain_reason": rec.abstain_reason if isinstance(rec.abstain_reason, str) else None,
            }
        )
    return rows


@dataclass
class Routing:
    """One constitution version's edge cases, with what the judge signal gate will have to decide on."""

    cases: pd.DataFrame  # EDGE_CASE_COLUMNS
    settings: RoutingSettings
    gate_references: int  # reference labels the gate will have if every audit pair reuses an earlier label
    gate_audit_requested: int  # extra audit pairs asked for because that falls short of the gate's min_n
    seed: str

    def report(self, content_hash: str) -> StageReport:
        cases = self.cases
        to_send = int(cases["send"].sum())
        report = StageReport(
            tags={"constitution.hash": content_hash},
            params={"routing": self.settings.model_dump(), "audit_seed": self.seed},
        )
        report.add(
            n_edge_cases=len(cases),
            to_send=to_send,
            audit_slice=int(cases["audit"].sum()),
            budget=self.settings.human_budget,
            reused_earlier_labels=len(cases) - to_send,
            # Undecided gate: how many more audit labels were asked for, so the next tick can decide.
            judge_gate_references=self.gate_references,
            judge_gate_audit_requested=self.gate_audit_requested,
            judge_gate_audit_added=int((cases["route_reason"] == "gate_audit").sum()),
        )
        report.detail("by_reason", value_counts(cases["route_reason"]), "reason")
        return report.table(
            "edge_cases",
            cases,
            ["pair_id", "route_reason", "priority", "category", "confidence", "audit", "send"],
            artifact=False,
        )


def route_for_version(
    prefs: pd.DataFrame,
    pairs: pd.DataFrame,
    constitution: Constitution,
    earlier: pd.DataFrame,
    known_labels: pd.DataFrame,
    seed: str = DEFAULT_AUDIT_SEED,
) -> Routing:
    """`route_edge_cases` for one version, topped up with extra audit pairs when the judge signal gate would
    otherwise lack reference labels: `earlier` holds human labels from other versions (reused, never re-sent),
    `known_labels` the imported pairs' labels (references the gate already has)."""
    routing, gate = constitution.routing, constitution.judge.gate
    already = set(earlier["pair_id"])
    cases = route_edge_cases(prefs, pairs, routing, already, seed)
    audit = cases.loc[cases["audit"], "pair_id"]
    have = len(gate_comparisons(prefs, earlier, audit, known_labels))
    missing = max(0, gate.min_n - have)
    if missing:
        known = (
            known_labels.loc[known_labels["label"].isin(["A", "B"]), "pair_id"] if len(known_labels) else []
        )
        cases = route_edge_cases(
            prefs, pairs, routing, already, seed, extra_audit=missing, extra_audit_exclude=set(known)
        )
    return Routing(cases, routing, have, missing, seed)
