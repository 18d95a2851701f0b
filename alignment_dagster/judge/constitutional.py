"""A constitution's whole judge: its LLM template(s), its preference model, or both, combined into one
label per pair (`judge.ensemble_agreement` decides when they must agree). A plain function: the
`ai_preferences` asset only adds storage, MLflow and metadata around it."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from alignment_dagster.judge.aggregate import PAIR_COLUMNS, combine_judges
from alignment_dagster.judge.cache import JudgmentCache
from alignment_dagster.judge.preference_model import judge_with_reward_model
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


def judge_constitution(
    c: Constitution,
    pairs: pd.DataFrame,
    backend_factory: Callable[[], object],
    storage,
    tracking_uri: str | None,
    *,
    shard_size: int = 64,
    progress: bool = True,
) -> ConstitutionJudgment:
    """Judge `pairs` the way constitution `c` says. The LLM backend is made only when an LLM template is
    used (`backend_factory`), so a preference-model-only constitution loads no language model."""
    templates = (
        [get_template(t) for t in [c.judge.template, *c.judge.ensemble_templates]]
        if c.judge.use_llm_judge
        else []
    )
    ids: list[str] = []
    result, backend, scored_before = None, None, 0
    if templates:
        backend = backend_factory()
        scored_before = backend.stats.scored_prompts
        caches = [JudgmentCache(storage, backend.identity, t.version) for t in templates]
        result = judge_ensemble(
            pairs, c, backend, templates, caches, shard_size=shard_size, progress=progress
        )
        ids.append(backend.identity)
    lineage: dict[str, object] = {}
    notes: list[str] = []
    if c.judge.preference_model:
        with tempfile.TemporaryDirectory(prefix="alignment-pm-") as workdir:
            pm, lineage = judge_with_reward_model(
                c, pairs, storage, tracking_uri, Path(workdir), shard_size=shard_size
            )
        notes.append(
            f"preference-model judge {lineage['judge.preference_model']}: {pm.model_calls} replies scored, "
            f"{pm.cache_hits} cached, {pm.n_trained_on} pairs left out (trained on)"
        )
        ids.append(str(lineage["judge.preference_model_id"]))
        pm_pairs = pm.pairs[PAIR_COLUMNS]
        if result is None:
            result = JudgeResult(
                pd.DataFrame(columns=PRINCIPLE_COLUMNS), pm_pairs, JudgeStats(pairs=len(pm_pairs))
            )
        else:
            result = JudgeResult(
                result.principles,
                combine_judges([result.pairs, pm_pairs], c.judge.ensemble_agreement),
                result.stats,
            )
    assert result is not None, "JudgeSettings refuses a constitution with neither judge"
    scored = backend.stats.scored_prompts - scored_before if backend is not None else 0
    return ConstitutionJudgment(
        result, ",".join(ids), ",".join(t.version for t in templates), scored, lineage, notes
    )
