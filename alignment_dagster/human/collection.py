"""Collecting one constitution version's human labels: send its edge cases to a labelling backend (replay,
file queue or Label Studio), read back what is answered, carry earlier versions' labels over, and measure
agreement between annotators and with the judge. Plain functions; `LabellingResource` only holds settings."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import pandas as pd

from alignment_dagster.core.redaction import redact_url
from alignment_dagster.core.reporting import StageReport
from alignment_dagster.core.storage import Storage
from alignment_dagster.human.agreement import inter_annotator_agreement
from alignment_dagster.human.calibration import CalibrationReport, judge_human_agreement, reliability_plot
from alignment_dagster.human.file_queue import FileQueue
from alignment_dagster.human.label_studio import LabelStudioClient
from alignment_dagster.human.labels import HUMAN_LABEL_COLUMNS
from alignment_dagster.human.polling import file_queue_marker
from alignment_dagster.human.replay import ReplayLabeller


@dataclass(frozen=True)
class LabellingTarget:
    """Where edge cases go: `replay` (known dataset labels, no humans), `file_queue` or `label_studio`."""

    backend: str
    label_studio_url: str | None = None
    token_env: str = "LABEL_STUDIO_API_KEY"

    def studio(self) -> LabelStudioClient:
        if not self.label_studio_url:
            raise ValueError("labelling backend label_studio needs label_studio_url")
        return LabelStudioClient(self.label_studio_url, self.token_env)


@dataclass
class Collected:
    labels: pd.DataFrame  # human_labels contract, everything this backend holds for the version
    pending: list[str]  # sent pairs still without a label
    info: dict = field(default_factory=dict)  # backend facts for metadata (never secrets)


def collect_labels(
    target: LabellingTarget,
    constitution_key: str,
    principles: list[str],
    tasks: pd.DataFrame,
    known_labels: pd.DataFrame,
    storage: Storage,
) -> Collected:
    """Send the edge cases (joined with their pairs) and return the labels collected so far."""
    sent = tasks[tasks["send"].astype(bool)] if "send" in tasks.columns else tasks
    if target.backend == "replay":
        result = ReplayLabeller(known_labels).label(tasks)
        return Collected(
            result.labels, result.pending, {"backend": "replay (known dataset labels, not live humans)"}
        )
    if target.backend == "file_queue":
        queue = FileQueue(storage, f"queue/{constitution_key}")
        batch = queue.write_batch(tasks, principles) if len(sent) else None
        labels = queue.labels()
        info = {
            "backend": "file_queue",
            "queue": storage.url(f"queue/{constitution_key}"),
            "batch_id": getattr(batch, "batch_id", None),
        }
    else:
        with target.studio() as client:
            project = client.ensure_project(constitution_key, None, principles)
            added = client.import_tasks(project, tasks, constitution_key)
            labels = client.completed_annotations(project).reindex(columns=HUMAN_LABEL_COLUMNS)
        info = {
            "backend": "label_studio",
            "url": redact_url(target.label_studio_url or ""),
            "project": project,
            "tasks_added": added,
        }
    have = set(labels["pair_id"])
    return Collected(labels, [p for p in sent["pair_id"] if p not in have], info)


def label_markers(
    target: LabellingTarget, constitution_keys: list[str], storage: Storage
) -> dict[str, str | None]:
    """Per constitution version, a marker that changes when its completed annotations change (see
    `human.polling`); None where nothing was sent yet. The replay labeller answers at once inside
    `human_labels`, so there is nothing to poll: {}."""
    if target.backend == "replay":
        return {}
    if target.backend == "file_queue":
        return {
            k: file_queue_marker(storage.list(f"queue/{k}/labels"))
            if storage.list(f"queue/{k}/batches")
            else None
            for k in constitution_keys
        }
    with target.studio() as client:
        projects = client.constitution_projects()
        return {
            k: client.annotation_marker(projects[k]) if k in projects else None for k in constitution_keys
        }


def pooled_labels(tables: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Human labels of other constitution versions, one row per distinct answer: a preference between two
    fixed replies does not depend on the constitution, so they are reused instead of asking again."""
    frames = [t for t in tables if len(t)]
    if not frames:
        return pd.DataFrame(columns=HUMAN_LABEL_COLUMNS)
    return pd.concat(frames, ignore_index=True).drop_duplicates(
        ["pair_id", "annotator", "choice", "labelled_at"]
    )


@dataclass
class VersionLabels:
    labels: pd.DataFrame  # human_labels contract: collected now plus earlier labels carried over
    collected: Collected
    reused: int  # earlier labels carried over
    inter_annotator: dict
    calibration: CalibrationReport
    reliability_png: bytes

    def report(self, content_hash: str, backend: str) -> StageReport:
        collected = self.collected
        pairs_labelled = int(self.labels["pair_id"].nunique()) if len(self.labels) else 0
        calibration = {k: v for k, v in self.calibration.metrics().items() if v is not None}
        report = StageReport(
            tags={
                "constitution.hash": content_hash,
                "labelling.backend": collected.info.get("backend", backend),
            }
        )
        report.params.update(
            {"labelling_backend": backend, **{f"labelling.{k}": v for k, v in collected.info.items()}}
        )
        report.add(
            n_labels=len(self.labels),
            pairs_labelled=pairs_labelled,
            pending=len(collected.pending),
            reused_from_earlier_versions=self.reused,
        )
        report.detail("labelling", collected.info).detail("audit_calibration", calibration, "audit")
        report.detail("inter_annotator", self.inter_annotator, "iaa")
        report.plot("reliability", self.reliability_png, "reliability diagram")
        return report.table("reliability", self.calibration.table)


def labels_for_version(
    collected: Collected, earlier: pd.DataFrame, prefs: pd.DataFrame, edge_cases: pd.DataFrame, title: str
) -> VersionLabels:
    """This version's labels: those collected now, plus every earlier label on one of its pairs that was not
    collected again (routing never re-sends those pairs, so without this a new version's human-only blend
    would lose them); with inter-annotator agreement and the judge's calibration on the audit slice."""
    fresh = set(collected.labels["pair_id"])
    reused = earlier[earlier["pair_id"].isin(set(prefs["pair_id"])) & ~earlier["pair_id"].isin(fresh)]
    labels = pd.concat([collected.labels, reused], ignore_index=True).reindex(columns=HUMAN_LABEL_COLUMNS)
    iaa = inter_annotator_agreement(labels).as_dict() if len(labels) else {}
    audit = list(edge_cases.loc[edge_cases["audit"].astype(bool), "pair_id"])
    calibration = judge_human_agreement(prefs, labels, audit)
    png = reliability_plot(calibration.table, f"Judge reliability, {title}")
    return VersionLabels(
        labels, collected, len(reused), {k: v for k, v in iaa.items() if v is not None}, calibration, png
    )
