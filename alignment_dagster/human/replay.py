"""Replay "labeller": answers edge cases with *known* dataset labels (e.g. HH-RLHF crowdworker choices).

This is not a human in the loop. It replays labels humans gave long ago, so the whole loop (routing ->
labelling -> calibration -> blend) runs end to end in tests and demos, and judge-human agreement can be
measured on real human preferences. Every label it produces says so: annotator "replay:<source_dataset>",
backend "replay". Pairs without a known label (e.g. freshly sampled ones) stay pending.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pandas as pd

from alignment_dagster.human.labels import CHOICES, HUMAN_LABEL_COLUMNS, utc_iso

BACKEND = "replay"


@dataclass
class ReplayResult:
    labels: pd.DataFrame  # human_labels contract
    pending: list[str]  # edge-case pair ids with no known label, in edge-case order


class ReplayLabeller:
    """Answers from `known_labels` (pair_id, label A/B/tie, source_dataset), kept apart from the judge."""

    def __init__(self, known_labels: pd.DataFrame):
        need = {"pair_id", "label", "source_dataset"} - set(known_labels.columns)
        if need:
            raise ValueError(f"known labels lack column(s) {sorted(need)}")
        bad = sorted(set(known_labels["label"]) - set(CHOICES))
        if bad:
            raise ValueError(f"known labels: label {bad[0]!r} is not one of A, B, tie")
        dup = known_labels["pair_id"].duplicated()
        if dup.any():
            raise ValueError(f"known labels: pair_id {known_labels.loc[dup, 'pair_id'].iloc[0]!r} twice")
        self._known = {r.pair_id: (r.label, r.source_dataset) for r in known_labels.itertuples(index=False)}

    def __repr__(self) -> str:
        return f"ReplayLabeller({len(self._known)} known labels)"

    def label(self, edge_cases: pd.DataFrame, labelled_at: datetime | str | None = None) -> ReplayResult:
        """Labels for the edge cases with a known label. Rows with `send == False` (audit pairs whose earlier
        label is reused) are skipped, as a real labelling backend would never see them."""
        cases = edge_cases
        if "send" in cases.columns:
            cases = cases[cases["send"].astype(bool)]
        when = utc_iso(labelled_at)
        rows, pending = [], []
        for pid in cases["pair_id"]:
            known = self._known.get(pid)
            if known is None:
                pending.append(pid)
                continue
            label, source = known
            rows.append(
                {
                    "pair_id": pid,
                    "choice": label,
                    "annotator": f"replay:{source}",
                    "labelled_at": when,
                    "backend": BACKEND,
                    "comment": "replayed known dataset label",
                }
            )
        return ReplayResult(pd.DataFrame(rows, columns=HUMAN_LABEL_COLUMNS), pending)
