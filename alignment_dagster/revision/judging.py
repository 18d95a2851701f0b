"""The constitution's own judge applied to revisions: each revision against the reply it replaces, both
orders, soft labels. LLM templates score per principle through the judgment cache (`judge.runner`), a
preference model per pair (`judge.preference_model`); a principle's probability is the mean over the judges
the constitution uses, so a constitution judged by its reward model alone gates revisions with it alone."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from alignment_dagster.backends import Backend
from alignment_dagster.core.shard_cache import ShardCache
from alignment_dagster.core.storage import Storage
from alignment_dagster.judge.cache import JudgmentCache
from alignment_dagster.judge.constitutional import judge_constitution
from alignment_dagster.judge.preference_model import judge_with_preference_model, resolve_model_ref
from alignment_dagster.judge.runner import judge_ensemble
from alignment_dagster.judge.templates import get_template
from alignment_dagster.specs.constitution import Constitution

JUDGED_COLUMNS = ["pair_id", "prompt_id", "prompt", "response_a", "response_b", "category"]


@dataclass
class JudgeCount:
    """What judging revisions cost in this run."""

    prompts_scored: int = 0  # LLM judge prompts scored (cache hits excluded)
    cache_hits: int = 0
    replies_scored: int = 0  # replies a preference model scored
    seconds: float = 0.0


@dataclass
class RevisionJudge:
    """The judge of one constitution version, loaded once for a stage: `backend_factory` makes the LLM
    judge only when the constitution uses LLM templates."""

    constitution: Constitution
    backend_factory: Callable[[], Backend]
    storage: Storage | None
    tracking_uri: str | None = None
    shard_size: int = 64
    count: JudgeCount = field(default_factory=JudgeCount)
    _backend: Backend | None = None
    _pm: tuple | None = None  # (scorer, model id, card, cache), loaded on first use
    _workdir: tempfile.TemporaryDirectory | None = None

    @property
    def uses_llm(self) -> bool:
        return self.constitution.judge.use_llm_judge

    def identity(self) -> str:
        """Who judges: the LLM's identity and/or the preference model's reference."""
        ids = [self.llm().identity] if self.uses_llm else []
        return ",".join([*ids, *([self.constitution.judge.preference_model] if self._has_pm else [])])

    @property
    def _has_pm(self) -> bool:
        return bool(self.constitution.judge.preference_model)

    def llm(self) -> Backend:
        if self._backend is None:
            self._backend = self.backend_factory()
        return self._backend

    def principle_probabilities(
        self, pairs: pd.DataFrame, principle_ids: dict[str, list[str]]
    ) -> pd.DataFrame:
        """P(response_a better) per (pair_id, principle_id) for the principles each pair names, both orders,
        averaged over the constitution's judges."""
        frames = []
        if self.uses_llm:
            frames += [self._llm_group(pairs, ids) for ids in _groups(pairs, principle_ids)]
        if self._has_pm:
            pm = self._pm_probabilities(pairs)
            frames.append(
                pd.DataFrame(
                    [(pid, prid, pm[pid]) for pid in pairs["pair_id"] for prid in principle_ids[pid]],
                    columns=["pair_id", "principle_id", "p_a"],
                )
            )
        table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["pair_id"])
        return table.groupby(["pair_id", "principle_id"], as_index=False)["p_a"].mean()

    def _llm_group(self, pairs: pd.DataFrame, ids: tuple[tuple[str, ...], list[str]]) -> pd.DataFrame:
        principle_ids, pair_ids = ids
        chosen = [p for p in self.constitution.principles if p.id in principle_ids]
        sub = self.constitution.model_copy(update={"principles": chosen})
        settings = self.constitution.judge
        templates = [get_template(t) for t in [settings.template, *settings.ensemble_templates]]
        backend = self.llm()
        caches = [JudgmentCache(self.storage, backend.identity, t.version) for t in templates]
        rows = pairs[pairs["pair_id"].isin(set(pair_ids))][JUDGED_COLUMNS]
        result = judge_ensemble(
            rows, sub, backend, templates, caches, shard_size=self.shard_size, progress=False
        )
        self.count.prompts_scored += result.stats.model_calls
        self.count.cache_hits += result.stats.cache_hits
        self.count.seconds += result.stats.seconds
        return result.principles[["pair_id", "principle_id", "p_a"]]

    def _pm_probabilities(self, pairs: pd.DataFrame) -> dict[str, float]:
        scorer, model_id, card, cache = self._preference_model()
        result = judge_with_preference_model(
            pairs[JUDGED_COLUMNS],
            scorer.score,
            model_id,
            self.constitution.judge,
            temperature=self.constitution.judge.preference_model_temperature,
            trained_prompt_ids=card.get("train_prompt_ids", []),
            cache=cache,
            shard_size=self.shard_size,
        )
        self.count.replies_scored += result.model_calls
        self.count.seconds += result.seconds
        return dict(zip(result.pairs["pair_id"], result.pairs["p_a"], strict=True))

    def _preference_model(self) -> tuple:
        if self._pm is None:
            from alignment_dagster.backends.identity import content_hash
            from alignment_dagster.training.artifacts import MODEL_CARD, load_reward_scorer, read_model_card
            from alignment_dagster.training.reward import RewardScorer

            self._workdir = tempfile.TemporaryDirectory(prefix="alignment-revision-pm-")
            ref = self.constitution.judge.preference_model
            folder = resolve_model_ref(ref, self.storage, self.tracking_uri, Path(self._workdir.name))
            card = read_model_card(folder) if (folder / MODEL_CARD).is_file() else {}
            scorer = load_reward_scorer(folder) if card else RewardScorer(folder)
            model_id = f"pm:{content_hash(folder)}"
            cache = ShardCache(self.storage, f"cache/pm-scores/{model_id.removeprefix('pm:')}")
            self._pm = (scorer, model_id, card, cache)
        return self._pm

    def overall(self, pairs: pd.DataFrame) -> pd.DataFrame:
        """The constitution's whole verdict per pair (label, p_a, confidence, abstain_reason), as
        `ai_preferences` would give it: every applicable principle, weighted, with its abstention rules."""
        judged = judge_constitution(
            self.constitution,
            pairs,
            self.llm,
            self.storage,
            self.tracking_uri,
            shard_size=self.shard_size,
            progress=False,
        )
        self.count.prompts_scored += judged.backend_prompts_scored
        self.count.cache_hits += judged.result.stats.cache_hits
        self.count.seconds += judged.result.stats.seconds
        return judged.labelled

    def close(self) -> None:
        if self._workdir is not None:
            self._workdir.cleanup()


def _groups(
    pairs: pd.DataFrame, principle_ids: dict[str, list[str]]
) -> list[tuple[tuple[str, ...], list[str]]]:
    """Pairs grouped by the principles they are judged under (one judge call per group)."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for pid in pairs["pair_id"]:
        groups.setdefault(tuple(sorted(principle_ids[pid])), []).append(pid)
    return list(groups.items())
