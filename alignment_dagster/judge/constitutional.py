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
    labelled: pd.DataFrame | None = None  # result.pairs with each pair's prompt_id, category and origin

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
    if settings.preference_model:
        with tempfile.TemporaryDirectory(prefix="alignment-pm-") as workdir:
            pm, lineage = judge_with_reward_model(
                constitution, pairs, storage, tracking_uri, Path(workdir), shard_size=shard_size
            )
        notes.append(
            f"preference-model judge {lineage['judge.preference_model']}: {pm.model_calls} replies "
            f"scored, {pm.cache_hits} cached, {pm.n_trained_on} pairs left out (trained on)"
        )
        ids.append(str(lineage["judge.preference_model_id"]))
        pm_pairs = pm.pairs[PAIR_COLUMNS]
        if result is None:
            result = JudgeResult(
                pd.DataFrame(columns=PRINCIPLE_COLUMNS), pm_pairs, JudgeStats(pairs=len(pm_pairs))
            )
        else:
            combined = combine_judges([result.pairs, pm_pairs], settings.ensemble_agreement)
            result = JudgeResult(result.principles, combined, result.stats)
    assert result is not None, "JudgeSettings refuses a constitution with neither judge"
    scored = backend.stats.scored_prompts - scored_before if backend is not None else 0
    context = [col for col in ("pair_id", "prompt_id", "category", "origin") if col in pairs.columns]
    labelled = result.pairs.merge(pairs[context], on="pair_id", how="left")
    return ConstitutionJudgment(
        result, ",".join(ids), ",".join(t.version for t in templates), scored, lineage, notes, labelled
    )
