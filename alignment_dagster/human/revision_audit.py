"""The human audit of phase-1 revisions: "which is better, the original or the revision?" for a hash-drawn
slice of the accepted revisions, through the labelling backends `human_labels` uses (replay, file queue,
Label Studio), and the judge signal gate (`judge.gate`) on the answers.

The revision's slot (A or B) is drawn by hash per pair, so a person who tends to pick A cannot favour either
side; the judge's lean is taken in the same slot. The gate then asks whether the judge's verdict on
revisions agrees with people significantly above chance: pass, fail (sft_dataset is refused) or undecided
(too few answers, as with the replay labeller, which has none for revisions: the judge's acceptance stands
and the report says so).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from alignment_dagster.core.keys import sha256_hex
from alignment_dagster.core.storage import Storage
from alignment_dagster.data.pairs import pair_id_for, swap_for
from alignment_dagster.human.collection import Collected, LabellingTarget, collect_labels
from alignment_dagster.judge.gate import GateReport, gate_comparisons, judge_gate

GUIDANCE = [
    "Each task shows a user's message and two replies to it: one is an AI assistant's first reply, the other "
    "a revision the assistant wrote after critiquing it. You are not told which is which.",
    "Which reply is better: more helpful, honest and harmless? Answer A, B, or tie if neither is better.",
]
AUDIT_COLUMNS = [
    "pair_id",
    "prompt_id",
    "category",
    "prompt",
    "response_a",
    "response_b",
    "revision_slot",
    "p_a",
    "priority",
    "route_reason",
    "send",
]


def audit_key(constitution_key: str) -> str:
    """Where a version's audit goes: its own file queue (`queue/<key>`) or Label Studio project (the prefix
    first, so a title cut to Label Studio's 50 characters keeps the version's trailing sha8)."""
    return f"revisions-{constitution_key}"


def in_audit(prompt_id: str, fraction: float) -> bool:
    return int(sha256_hex(f"revision-audit:{prompt_id}")[:8], 16) / 0x1_0000_0000 < fraction


def audit_tasks(best: pd.DataFrame, fraction: float) -> pd.DataFrame:
    """The audit slice of accepted revisions (best: prompt_id, category, prompt, original, revision,
    p_revision = the judge's P(revision better than the original)), as labelling tasks with the pair shown
    in the drawn order and the judge's P(A better) for that order."""
    rows = []
    for r in best.itertuples(index=False):
        if not in_audit(r.prompt_id, fraction):
            continue
        swap = swap_for(f"revision:{r.prompt_id}:{r.revision}")
        a, b = (r.original, r.revision) if swap else (r.revision, r.original)
        rows.append(
            {
                "pair_id": pair_id_for(r.prompt, a, b),
                "prompt_id": r.prompt_id,
                "category": r.category,
                "prompt": r.prompt,
                "response_a": a,
                "response_b": b,
                "revision_slot": "B" if swap else "A",
                "p_a": 1.0 - r.p_revision if swap else r.p_revision,
                "priority": 0,
                "route_reason": "revision_audit",
                "send": True,
            }
        )
    return pd.DataFrame(rows, columns=AUDIT_COLUMNS)


NO_KNOWN_LABELS = pd.DataFrame(columns=["pair_id", "label", "source_dataset"])


def collect_audit(
    target: LabellingTarget, constitution_key: str, tasks: pd.DataFrame, storage: Storage
) -> Collected:
    """Send the audit tasks (a batch, a project) and read back what is answered so far."""
    return collect_labels(target, audit_key(constitution_key), GUIDANCE, tasks, NO_KNOWN_LABELS, storage)


@dataclass(frozen=True)
class AuditVerdict:
    gate: GateReport
    n_tasks: int
    n_answered: int

    @property
    def refuses(self) -> bool:
        return self.gate.blocks_ai_labels

    @property
    def accepted_on(self) -> str:
        """What the accepted revisions rest on, as the dataset records it."""
        if self.gate.verdict == "pass":
            return "judge and human audit (gate passed)"
        if self.gate.verdict == "undecided":
            return f"judge only: human audit undecided ({self.gate.reason})"
        return f"judge only: human audit failed, overridden ({self.gate.override})"


def audit_verdict(
    tasks: pd.DataFrame, collected: Collected, alpha: float, min_n: int, override: str | None = None
) -> AuditVerdict:
    """The judge signal gate on the audit answers: the judge's lean (side of p_a) against the people's."""
    prefs = tasks.assign(abstain_reason=None)[["pair_id", "p_a", "abstain_reason"]]
    comparisons = gate_comparisons(prefs, collected.labels, list(tasks["pair_id"]), NO_KNOWN_LABELS)
    gate = judge_gate(
        comparisons, alpha=alpha, min_n=min_n, override=override, override_source="constitution"
    )
    answered = int(collected.labels["pair_id"].nunique()) if len(collected.labels) else 0
    return AuditVerdict(gate, len(tasks), answered)
