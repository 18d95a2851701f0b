"""`preference_dataset` as a plain function: the judge signal gate (and, where the constitution asks, the
length-bias check) decides whether AI labels may be used, then the blend merges AI and human labels into
TRL-ready rows (no model calls)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from alignment_dagster.core.keys import canonical_json, sha256_hex
from alignment_dagster.core.reporting import StageReport, value_counts
from alignment_dagster.data.blending import BlendResult, blend_preferences
from alignment_dagster.human.agreement import aggregate_labels
from alignment_dagster.judge.bias import LengthBiasReport, length_bias_for_version
from alignment_dagster.judge.gate import GateReport, gate_for_version
from alignment_dagster.specs.blend import Blend
from alignment_dagster.specs.constitution import Constitution


@dataclass
class PreferenceData:
    blend: Blend
    blend_source: str
    gate: GateReport
    result: BlendResult | None  # None: refused (by the gate, the length check, or missing revision pairs)
    length: LengthBiasReport | None = None
    missing: str | None = None  # why revision pairs the blend asks for are not there

    @property
    def blocked(self) -> bool:
        return self.result is None

    @property
    def version(self) -> str:
        """The dataset's data version: a hash of what training reads from it (rows, weights, margins, splits),
        so an upstream re-run that changes no row changes no version and retrains nothing."""
        return dataset_version(self.result.dataset) if self.result is not None else "refused"

    def refusal(self) -> str:
        if self.missing is not None:
            return f"blend {self.blend.name!r} takes revision pairs (revision_weight > 0), {self.missing}"
        if self.gate.blocks_ai_labels:
            return (
                f"blend {self.blend.name!r} uses AI labels, blocked by the judge signal gate: "
                f"{self.gate.reason}"
            )
        reason = self.length.reason if self.length is not None else ""
        return f"blend {self.blend.name!r} uses AI labels, blocked by the judge length-bias check: {reason}"

    def report(self) -> StageReport:
        gate, blend = self.gate, self.blend
        tags = {
            "blend.name": blend.name,
            "blend.hash": blend.content_hash,
            "judge_gate.verdict": gate.verdict,
            "judge_gate.blocked": str(self.blocked).lower(),
        }
        if gate.override and gate.verdict == "fail":
            tags["judge_gate.override_source"] = str(gate.override_source)
        if self.blocked:
            tags["judge_gate.reason" if self.missing is None else "refused.reason"] = self.refusal()[:4000]
        report = StageReport(tags=tags, metrics={f"judge_gate.{k}": v for k, v in gate.metrics().items()})
        if self.length is not None:
            report.tags.update(
                {
                    "length_bias.verdict": self.length.verdict,
                    "length_bias.blocks": str(self.length.blocks_ai_labels).lower(),
                }
            )
            report.metrics.update({f"length_bias.{k}": v for k, v in self.length.metrics().items()})
        if self.result is None:
            return report
        dataset = self.result.dataset
        report.params.update(
            {
                "blend": blend.model_dump(),
                "blend.source": self.blend_source,
                **({"judge_gate.override": gate.override} if gate.override else {}),
            }
        )
        report.add(n_rows=len(dataset), dataset_version=self.version)
        report.tags["dataset.version"] = self.version
        report.detail("by_source", self.result.counts, "source")
        report.detail("by_split", value_counts(dataset["split"]) if len(dataset) else {}, "split")
        report.detail("conflicts", dict(self.result.conflicts), "conflicts")
        report.detail("dropped", dict(self.result.dropped), "dropped")
        report.detail("blend", blend.model_dump()).detail("judge_gate", gate.metadata())
        if self.length is not None:
            report.detail("length_bias", self.length.metadata())
        report.table(
            "preference_dataset",
            dataset[["pair_id", "prompt_id", "source", "split", "weight", "margin"]],
            ["pair_id", "source", "split", "weight", "margin"],
        )
        if len(dataset):
            report.datasets["preference_dataset"] = report.tables["preference_dataset"].frame
        return report


def dataset_version(dataset: pd.DataFrame) -> str:
    columns = ["pair_id", "prompt", "chosen", "rejected", "weight", "margin", "split"]
    rows = dataset[columns].astype(str).sort_values("pair_id").values.tolist() if len(dataset) else []
    return sha256_hex(canonical_json(rows))[:16]


def build_preference_dataset(
    pairs: pd.DataFrame,
    prefs: pd.DataFrame,
    human_labels: pd.DataFrame,
    edge_cases: pd.DataFrame,
    known_labels: pd.DataFrame,
    constitution: Constitution,
    blend: Blend,
    blend_source: str,
    revisions: pd.DataFrame | None = None,
) -> PreferenceData:
    """The blend's rows for one constitution version, or a refusal when the blend uses AI labels and the
    version's judge failed the signal gate, or the length-bias check where the constitution makes that block
    (`judge.length_bias.block_ai_labels`), with no override; or when it takes revision pairs
    (`revision_weight`) and the version has no `sft_dataset` (`revisions` None: phase 1 has not run, or its
    audit refused it)."""
    settings = constitution.judge.gate
    gate = gate_for_version(
        prefs,
        edge_cases,
        human_labels,
        known_labels,
        settings.alpha,
        settings.min_n,
        constitution_override=settings.override,
        blend_override=blend.judge_gate_override,
    )
    length = length_bias_for_version(
        prefs,
        edge_cases,
        human_labels,
        known_labels,
        pairs,
        constitution.judge.length_bias,
        override=gate.override,
    )
    if blend.uses_ai and (gate.blocks_ai_labels or length.blocks_ai_labels):
        return PreferenceData(blend, blend_source, gate, None, length)
    if blend.revision_weight > 0 and revisions is None:
        missing = (
            "but this constitution version has no sft_dataset (phase 1 has not run, or the human audit of "
            "its revisions refused it)"
        )
        return PreferenceData(blend, blend_source, gate, None, length, missing)
    human = (
        aggregate_labels(human_labels) if len(human_labels) else pd.DataFrame(columns=["pair_id", "choice"])
    )
    return PreferenceData(
        blend,
        blend_source,
        gate,
        blend_preferences(pairs, prefs, human, blend, known=known_labels, revisions=revisions),
        length,
    )
