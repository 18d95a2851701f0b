"""A constitution's whole judge: its LLM template(s), its preference model, or both, combined into one
label per pair (`judge.ensemble_agreement` decides when they must agree). A plain function: the
`ai_preferences` asset only adds storage, MLflow and metadata around it."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from alignment_dagster.core.reporting import StageReport, value_counts
from alignment_dagster.judge.aggregate import PAIR_COLUMNS, combine_judges
from alignment_dagster.judge.bias import EnsembleSize, ensemble_size, member_votes, model_name, reply_lengths
from alignment_dagster.judge.cache import JudgmentCache
from alignment_dagster.judge.preference_model import judge_with_reward_model
from alignment_dagster.judge.quality import CheckOutcome
from alignment_dagster.judge.runner import PRINCIPLE_COLUMNS, JudgeResult, JudgeStats, judge_ensemble
from alignment_dagster.judge.templates import get_template
from alignment_dagster.specs.constitution import Constitution


@dataclass
class ConstitutionJudgment:
    result: JudgeResult
    judge_id: str  # the LLM judge's identity and/or the preference model's, comma-joined
    template_versions: str  # comma-joined; empty without an LLM judge
    backend_prompts_scored: int = 0  # prompts the LLM backend scored in this call (cache hits excluded)
    lineage: dict[str, object] = field(default_factory=dict)  # the preference model's, empty without one
    notes: list[str] = field(default_factory=list)  # for the run log
    labelled: pd.DataFrame | None = None  # result.pairs with prompt_id, category, origin and reply lengths
    length_unit: str = ""  # the judge's tokens, or whitespace tokens without a tokenizer at hand
    ensemble: EnsembleSize | None = None  # with several judges: their effective number

    def report(self, constitution: Constitution, checks: list[CheckOutcome]) -> StageReport:
        """Labels, abstention reasons, cache hits and model calls, the quality checks, both tables."""
        labelled, stats = self.labelled, self.result.stats
        report = StageReport(
            tags={
                "constitution.hash": constitution.content_hash,
                "judge.id": self.judge_id,
                "judge.template": self.template_versions,
                **{k: str(v) for k, v in self.lineage.items()},
            }
        )
        report.add(
            n_pairs=len(labelled),
            model_calls=stats.model_calls,
            cache_hits=stats.cache_hits,
            judge_id=self.judge_id,
            template_version=self.template_versions,
        )
        report.detail("labels", value_counts(labelled["label"]), "label")
        report.detail("abstain_reasons", value_counts(labelled["abstain_reason"].dropna()), "abstain")
        report.detail(
            "stats", {**stats.as_dict(), "backend_prompts_scored": self.backend_prompts_scored}, "stats"
        )
        if self.lineage:
            report.detail("preference_model", self.lineage)
        if self.ensemble is not None:
            report.add(effective_judges=self.ensemble.effective_judges)
            report.detail("ensemble", self.ensemble.metrics())
            report.metrics.update(self.ensemble.metrics())
        report.tags["judge.length_unit"] = self.length_unit
        report.metrics.update({f"check.{ch.name}": ch.value for ch in checks})
        report.params.update(
            {
                "judge_id": self.judge_id,
                "template_version": self.template_versions,
                "judge_settings": constitution.judge.model_dump(),
            }
        )
        report.table(
            "ai_preferences",
            labelled,
            ["pair_id", "label", "p_chosen", "confidence", "vote_share", "abstain_reason"],
        )
        return report.table("ai_principle_votes", self.result.principles)


def judge_constitution(
    constitution: Constitution,
    pairs: pd.DataFrame,
    backend_factory: Callable[[], object],
    storage,
    tracking_uri: str | None,
    *,
    shard_size: int = 64,
    progress: bool = True,
) -> ConstitutionJudgment:
    """Judge `pairs` the way `constitution` says. The LLM backend is made only when an LLM template is used
    (`backend_factory`), so a preference-model-only constitution loads no language model."""
    settings = constitution.judge
    templates = [get_template(t) for t in [settings.template, *settings.ensemble_templates]]
    templates = templates if settings.use_llm_judge else []
    ids: list[str] = []
    result, backend, scored_before = None, None, 0
    if templates:
        backend = backend_factory()
        scored_before = backend.stats.scored_prompts
        caches = [JudgmentCache(storage, backend.identity, t.version) for t in templates]
        result = judge_ensemble(
            pairs, constitution, backend, templates, caches, shard_size=shard_size, progress=progress
        )
        ids.append(backend.identity)
    lineage: dict[str, object] = {}
    notes: list[str] = []
    pm_pairs = None
    if settings.preference_model:
        pm_pairs, lineage, note = _preference_model(constitution, pairs, storage, tracking_uri, shard_size)
        notes.append(note)
        ids.append(str(lineage["judge.preference_model_id"]))
        if result is None:
            result = JudgeResult(
                pd.DataFrame(columns=PRINCIPLE_COLUMNS), pm_pairs, JudgeStats(pairs=len(pm_pairs))
            )
        else:
            combined = combine_judges([result.pairs, pm_pairs], settings.ensemble_agreement)
            result = JudgeResult(result.principles, combined, result.stats)
    assert result is not None, "JudgeSettings refuses a constitution with neither judge"
    scored = backend.stats.scored_prompts - scored_before if backend is not None else 0
    labelled, unit = _labelled(result.pairs, pairs, backend)
    judgment = ConstitutionJudgment(
        result, ",".join(ids), ",".join(t.version for t in templates), scored, lineage, notes, labelled, unit
    )
    judgment.ensemble = _ensemble(result, pm_pairs)
    return judgment


def _preference_model(
    constitution: Constitution, pairs: pd.DataFrame, storage, tracking_uri: str | None, shard_size: int
) -> tuple[pd.DataFrame, dict[str, object], str]:
    """The preference model's per-pair rows, its lineage and a note for the run log."""
    with tempfile.TemporaryDirectory(prefix="alignment-pm-") as workdir:
        pm, lineage = judge_with_reward_model(
            constitution, pairs, storage, tracking_uri, Path(workdir), shard_size=shard_size
        )
    note = (
        f"preference-model judge {lineage['judge.preference_model']}: {pm.model_calls} replies "
        f"scored, {pm.cache_hits} cached, {pm.n_trained_on} pairs left out (trained on)"
    )
    return pm.pairs[PAIR_COLUMNS], lineage, note


def _labelled(judged: pd.DataFrame, pairs: pd.DataFrame, backend) -> tuple[pd.DataFrame, str]:
    """Per-pair results with the pair's prompt_id, category, origin and reply lengths (len_a, len_b,
    length_unit). Lengths are counted here, where the judge's tokenizer is at hand: the length_bias check
    runs later, after the human labels, without a model."""
    context = [col for col in ("pair_id", "prompt_id", "category", "origin") if col in pairs.columns]
    counter = backend.count_tokens if backend is not None else None
    unit = f"{model_name(backend.identity)} tokens" if backend is not None else ""
    lengths, unit = reply_lengths(pairs, counter, unit)
    labelled = judged.merge(pairs[context], on="pair_id", how="left").merge(lengths, on="pair_id", how="left")
    return labelled.assign(length_unit=unit), unit


def _ensemble(result: JudgeResult, pm_pairs: pd.DataFrame | None) -> EnsembleSize | None:
    """The effective number of independent judges when several judge (templates and a preference model);
    a preference model's pairs it trained on carry no vote and are left out."""
    extra = {}
    if pm_pairs is not None:
        held_out = pm_pairs[pm_pairs["abstain_reason"] != "trained_on"]
        extra["preference_model"] = held_out.set_index("pair_id")["p_a"]
    votes = member_votes(result.principles, extra)
    return ensemble_size(votes) if votes.shape[1] > 1 else None
