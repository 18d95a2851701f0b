"""`revisions` and `sft_dataset` as plain functions: the chains for one constitution version with the
judge's final word on each kept revision, what they cost and how often each round gained; then the accepted
revisions as SFT rows, unless the human audit's judge signal gate failed.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from alignment_dagster.backends import Backend
from alignment_dagster.core.keys import canonical_json, sha256_hex
from alignment_dagster.core.reporting import StageReport, markdown_table, value_counts
from alignment_dagster.core.storage import Storage
from alignment_dagster.data.pairs import pair_id_for
from alignment_dagster.evaluation.metrics import principle_outcome, win_rate
from alignment_dagster.human.collection import Collected, LabellingTarget
from alignment_dagster.human.labels import empty_labels
from alignment_dagster.human.revision_audit import AuditVerdict, audit_tasks, audit_verdict, collect_audit
from alignment_dagster.revision.call_cache import CallCache
from alignment_dagster.revision.chains import ROUND_COLUMNS, ChainRun, ChainSettings, run_chains
from alignment_dagster.revision.judging import JudgeCount, RevisionJudge
from alignment_dagster.specs.constitution import Constitution

CATEGORIES = ("red-team", "helpful")
NO_LABELS = empty_labels()
FINAL_COLUMNS = ["p_revision", "confidence", "judge_label"]
TABLE_COLUMNS = [*ROUND_COLUMNS, "best", *FINAL_COLUMNS]
SFT_COLUMNS = [
    "prompt_id",
    "category",
    "messages",
    "prompt",
    "revision",
    "original",
    "principle_ids",
    "best_round",
    "p_revision",
    "confidence",
    "judge_label",
    "accepted_on",
]


def revision_prompts(pool: pd.DataFrame, n: int, categories=CATEGORIES) -> pd.DataFrame:
    """Up to `n` training-split prompts of the given categories, round-robin over them (prompt_id order
    within each), so a small run sees red-team and helpful prompts alike; `n` 0: all of them."""
    train = pool[(pool["split"] == "train") & pool["category"].isin(categories)].sort_values(
        ["category", "prompt_id"]
    )
    groups = [g.reset_index(drop=True) for _, g in train.groupby("category", sort=True)]
    rows, i, limit = [], 0, n or len(train)
    while len(rows) < limit and any(i < len(g) for g in groups):
        rows += [g.iloc[i] for g in groups if i < len(g)]
        i += 1
    columns = ["prompt_id", "prompt", "category"]
    return pd.DataFrame(rows[:limit], columns=pool.columns)[columns].reset_index(drop=True)


@dataclass
class Revisions:
    table: pd.DataFrame  # ROUND_COLUMNS + best + FINAL_COLUMNS (on best rows)
    run: ChainRun | None  # None: no principle revises (nothing was generated)
    judge_id: str = ""
    judge_count: JudgeCount = field(default_factory=JudgeCount)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def best(self) -> pd.DataFrame:
        return best_revisions(self.table)

    def report(self, constitution: Constitution) -> StageReport:
        return revisions_report(self, constitution)


def best_revisions(table: pd.DataFrame) -> pd.DataFrame:
    """One row per chain that kept a revision (its best accepted round): the prompt, the original reply, the
    kept revision, the principles of its accepted rounds and the final judgment (once it is made)."""
    if not len(table):
        return pd.DataFrame(columns=[*TABLE_COLUMNS, "original", "principle_ids"])
    originals = table[table["round"] == 0].set_index("prompt_id")["revision"]
    best = table[table["best"].astype(bool)].copy()
    best["original"] = [originals[p] for p in best["prompt_id"]]
    accepted = table[table["accepted"].astype(bool)].groupby("prompt_id")["principle_id"].apply(list)
    best["principle_ids"] = [accepted.get(p, []) for p in best["prompt_id"]]
    return best.reset_index(drop=True)


def final_judgments(best: pd.DataFrame, judge: RevisionJudge) -> pd.DataFrame:
    """The constitution's whole verdict on each kept revision against the original (every applicable
    principle, weighted, both orders): P(revision better), its confidence and label (A = the revision)."""
    if not len(best):
        return pd.DataFrame(columns=["prompt_id", *FINAL_COLUMNS])
    pairs = pd.DataFrame(
        {
            "pair_id": [
                pair_id_for(p, r, o)
                for p, r, o in zip(best["prompt"], best["revision"], best["original"], strict=True)
            ],
            "prompt_id": best["prompt_id"],
            "prompt": best["prompt"],
            "response_a": best["revision"],
            "response_b": best["original"],
            "category": best["category"],
        }
    )
    labelled = judge.overall(pairs).set_index("pair_id")
    return pd.DataFrame(
        {
            "prompt_id": best["prompt_id"],
            "p_revision": [float(labelled.loc[p, "p_a"]) for p in pairs["pair_id"]],
            "confidence": [float(labelled.loc[p, "confidence"]) for p in pairs["pair_id"]],
            "judge_label": [str(labelled.loc[p, "label"]) for p in pairs["pair_id"]],
        }
    )


def build_revisions(
    constitution: Constitution,
    pool: pd.DataFrame,
    policy: Callable[[], Backend],
    judge: RevisionJudge,
    cache: Callable[[str], CallCache],
    settings: ChainSettings,
    max_prompts: int,
    categories: tuple[str, ...] = CATEGORIES,
) -> Revisions:
    """Chains for the training-split red-team and helpful prompts, and the final judgment of each kept
    revision. A constitution without critique and revision requests loads no model and yields no rows."""
    t0 = time.perf_counter()
    if not constitution.revising_principles():
        note = "no principle has critique and revision requests: nothing to revise"
        return Revisions(pd.DataFrame(columns=TABLE_COLUMNS), None, notes=[note])
    prompts = revision_prompts(pool, max_prompts, categories)
    backend = policy()
    run = run_chains(prompts, constitution, backend, judge, cache(backend.identity), settings)
    revisions = Revisions(run.rounds, run, judge.identity(), judge.count)
    final = final_judgments(revisions.best(), judge).set_index("prompt_id")
    table = run.rounds
    for column in FINAL_COLUMNS:
        table[column] = [
            final.loc[p, column] if b and p in final.index else None
            for p, b in zip(table["prompt_id"], table["best"], strict=True)
        ]
    revisions.seconds = time.perf_counter() - t0
    return revisions


def round_metrics(rounds: pd.DataFrame, tie_margin: float = 0.05) -> tuple[dict[str, float], pd.DataFrame]:
    """Per round: how often the judge preferred the revision (win/tie/loss of P(revision better) under the
    drawn principle, 95% Wilson interval; no-change rounds left out), acceptance, no-change rate, mean gain
    and length ratio; flat metrics and the same as a table."""
    metrics, table = {}, []
    for number, group in rounds[rounds["round"] > 0].groupby("round", sort=True):
        changed = group[~group["reason"].isin(["no_change", "empty"])]
        wins = win_rate(principle_outcome(float(p), tie_margin) for p in changed["p_principle"])
        lo, hi = wins.win_ci
        row = {
            "round": int(number),
            "n": len(group),
            "judged": wins.n,
            "win_rate": wins.win_rate,
            "win_ci_low": lo,
            "win_ci_high": hi,
            "accepted": int(group["accepted"].sum()),
            "accept_rate": float(group["accepted"].mean()),
            "no_change_rate": float((group["reason"] == "no_change").mean()),
            "mean_gain": float(group["gain"].astype(float).mean()),
            "mean_length_ratio": float(changed["length_ratio"].astype(float).mean())
            if len(changed)
            else float("nan"),
        }
        table.append(row)
        metrics.update({f"round.{number}.{k}": v for k, v in row.items() if k != "round"})
    return metrics, pd.DataFrame(table)


def revisions_report(revisions: Revisions, constitution: Constitution) -> StageReport:
    """Chains, acceptance, per-round win rates and gain, no-change rate, length change, refusal reasons and
    the cost per accepted revision; the whole table as an artifact."""
    t = revisions.table
    report = StageReport(
        tags={"constitution.hash": constitution.content_hash, "judge.id": revisions.judge_id}
    )
    report.notes.update({f"note_{i}": n for i, n in enumerate(revisions.notes)})
    rounds = t[t["round"] > 0]
    accepted = int(rounds["accepted"].sum())
    report.add(
        chains=int((t["round"] == 0).sum()),
        rounds=len(rounds),
        accepted=accepted,
        chains_kept=int(t["best"].astype(bool).sum()),
    )
    report.table("revisions", t, ["prompt_id", "round", "principle_id", "reason", "gain"], max_rows=12)
    if not len(rounds):
        return report
    per_round, table = round_metrics(rounds)
    report.add(
        accept_rate=float(rounds["accepted"].mean()),
        no_change_rate=float((rounds["reason"] == "no_change").mean()),
        boilerplate_stripped_rate=float(rounds["boilerplate_stripped"].astype(bool).mean()),
        new_refusals=int(rounds["new_refusal"].astype(bool).sum()),
        mean_length_ratio=float(rounds["length_ratio"].astype(float).mean()),
        **_cost(revisions, accepted),
    )
    reasons = Counter(r for reason in rounds["reason"] for r in reason.split(","))
    report.detail("reasons", dict(reasons), "reason").detail("calls", vars(revisions.run.calls), "calls")
    report.detail("judge", vars(revisions.judge_count), "judge")
    report.detail("principles_drawn", value_counts(rounds["principle_id"]), "drawn")
    report.metrics.update(per_round)
    report.notes["per_round"] = markdown_table(table.round(3), max_rows=len(table))
    return report.table("per_round", table)


def _cost(revisions: Revisions, accepted: int) -> dict[str, float]:
    """Model calls and seconds, in all and per accepted revision (NaN when none was accepted)."""
    calls, judge = revisions.run.calls, revisions.judge_count
    judge_calls = judge.prompts_scored + judge.replies_scored
    return {
        "generation_calls": calls.made,
        "generation_cached": calls.cached,
        "judge_calls": judge_calls,
        "seconds": revisions.seconds,
        "calls_per_accepted": (calls.made + judge_calls) / accepted if accepted else float("nan"),
        "seconds_per_accepted": revisions.seconds / accepted if accepted else float("nan"),
    }


# --- sft_dataset ------------------------------------------------------------------------------------------


def sft_rows(best: pd.DataFrame, accepted_on: str) -> pd.DataFrame:
    """The kept revisions as conversational rows (user prompt, then the revision); `datasets` loads them."""
    rows = [
        {
            "prompt_id": r.prompt_id,
            "category": r.category,
            "messages": [{"role": "user", "content": r.prompt}, {"role": "assistant", "content": r.revision}],
            "prompt": r.prompt,
            "revision": r.revision,
            "original": r.original,
            "principle_ids": list(r.principle_ids),
            "best_round": int(r.round),
            "p_revision": float(r.p_revision),
            "confidence": float(r.confidence),
            "judge_label": r.judge_label,
            "accepted_on": accepted_on,
        }
        for r in best.itertuples(index=False)
    ]
    return pd.DataFrame(rows, columns=SFT_COLUMNS)


def sft_version(dataset: pd.DataFrame) -> str:
    """The data version of an SFT dataset: a hash of the conversations it trains on."""
    rows = sorted(canonical_json(list(m)) for m in dataset["messages"]) if len(dataset) else []
    return sha256_hex(canonical_json(rows))[:16]


@dataclass
class SFTData:
    dataset: pd.DataFrame | None  # None: refused by the audit's gate
    verdict: AuditVerdict
    n_kept: int

    @property
    def refused(self) -> bool:
        return self.dataset is None

    def refusal(self) -> str:
        reason = self.verdict.gate.reason
        return f"sft_dataset refused: the human audit of revisions failed the judge signal gate: {reason}"

    def report(self) -> StageReport:
        v = self.verdict
        report = StageReport(
            tags={
                "revision_audit.verdict": v.gate.verdict,
                "revision_audit.refused": str(self.refused).lower(),
            }
        )
        report.add(
            kept_revisions=self.n_kept,
            audit_tasks=v.n_tasks,
            audit_answered=v.n_answered,
            audit_verdict=v.gate.verdict,
            audit_reason=v.gate.reason,
        )
        report.metrics.update({f"audit.{k}": val for k, val in v.gate.metrics().items() if val is not None})
        if self.dataset is not None:
            report.add(
                n_rows=len(self.dataset), accepted_on=v.accepted_on, dataset_version=sft_version(self.dataset)
            )
            report.table(
                "sft_dataset",
                self.dataset[["prompt_id", "category", "best_round", "p_revision", "revision"]],
                ["prompt_id", "best_round", "p_revision", "revision"],
            )
        return report


def build_sft_dataset(best: pd.DataFrame, verdict: AuditVerdict) -> SFTData:
    """The accepted revisions as SFT rows, or a refusal when the audit's judge signal gate failed."""
    if verdict.refuses:
        return SFTData(None, verdict, len(best))
    return SFTData(sft_rows(best, verdict.accepted_on), verdict, len(best))


def sft_dataset_for_version(
    constitution: Constitution, key: str, revisions: pd.DataFrame, target: LabellingTarget, storage: Storage
) -> SFTData:
    """The audit slice of the kept revisions sent to the labelling backend, the answers so far put to the
    judge signal gate (`judge.gate` of the constitution), then the SFT rows or the refusal."""
    best = best_revisions(revisions)
    tasks = audit_tasks(best, constitution.revision.audit_fraction)
    # Nothing to ask about: no batch, no empty Label Studio project.
    collected = collect_audit(target, key, tasks, storage) if len(tasks) else Collected(NO_LABELS, [])
    gate = constitution.judge.gate
    verdict = audit_verdict(tasks, collected, gate.alpha, gate.min_n, gate.override)
    return build_sft_dataset(best, verdict)
