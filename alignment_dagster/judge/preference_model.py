"""Preference-model judges: a sequence-classification reward model scores each reply on its own, and the
score difference becomes a probability (Bradley-Terry): p_a = sigmoid((r_a - r_b) / temperature).

Position-free by construction (each reply is scored alone), so there is nothing to debias; the result has
the LLM judge's per-pair columns, so it routes, blends and ensembles like any other judge. Scores are cached
per (model content hash, conversation, reply). A model never labels pairs whose prompts it was trained on
(the `train_prompt_ids` of its model card): they abstain with `trained_on` and are counted, so the loop of
round k+1 judged by round k's reward model cannot grade its own homework.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from alignment_dagster.core.keys import canonical_json, sha256_hex
from alignment_dagster.core.redaction import redacted_errors
from alignment_dagster.judge.aggregate import PAIR_COLUMNS, abstained_row
from alignment_dagster.specs.constitution import JudgeSettings

Scorer = Callable[[Sequence[str], Sequence[str]], list[float]]  # (conversations, replies) -> rewards


def bradley_terry(r_a: float, r_b: float, temperature: float = 1.0) -> float:
    """P(A preferred) from two rewards; temperature > 1 softens an over-confident model."""
    z = (r_a - r_b) / temperature
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def fit_temperature(diffs: Sequence[float], a_preferred: Sequence[bool]) -> float:
    """Temperature maximising the likelihood of human choices given reward differences r_a - r_b
    (golden-section search on log T in [1e-2, 1e2]); 1.0 when there are no labels."""
    if not diffs:
        return 1.0

    def nll(log_t: float) -> float:
        t = math.exp(log_t)
        return -sum(
            math.log(max(1e-12, bradley_terry(d, 0.0, t) if y else 1 - bradley_terry(d, 0.0, t)))
            for d, y in zip(diffs, a_preferred, strict=True)
        )

    lo, hi = math.log(1e-2), math.log(1e2)
    g = (math.sqrt(5) - 1) / 2
    for _ in range(80):
        m1, m2 = hi - g * (hi - lo), lo + g * (hi - lo)
        if nll(m1) <= nll(m2):
            hi = m2
        else:
            lo = m1
    return math.exp((lo + hi) / 2)


def score_key(model_id: str, conversation: str, reply: str) -> str:
    return sha256_hex(canonical_json({"pm": model_id, "conversation": conversation, "reply": reply}))[:32]


@dataclass
class PreferenceJudgeResult:
    pairs: pd.DataFrame  # PAIR_COLUMNS, plus r_a and r_b
    n_trained_on: int  # pairs excluded by the leakage guard
    model_calls: int  # replies scored by the model in this run
    cache_hits: int
    seconds: float


def judge_with_preference_model(
    pairs: pd.DataFrame,
    scorer: Scorer,
    model_id: str,
    settings: JudgeSettings,
    *,
    temperature: float = 1.0,
    trained_prompt_ids: Collection[str] = (),
    cache=None,
    shard_size: int = 256,
) -> PreferenceJudgeResult:
    """Label pairs (pair_id, prompt, response_a, response_b, optional prompt_id) with a reward model.

    Abstains below `settings.min_confidence` (confidence = |2 p_a - 1|, as for LLM judges) and on pairs
    whose prompt_id is in `trained_prompt_ids` (`trained_on`); those are not even scored. Uncached replies
    are scored `shard_size` at a time (one scorer call each, as `judge_pairs` shards its prompts) and each
    shard is cached before the next starts, so a crash loses at most the shard in progress.
    """
    t0 = time.perf_counter()
    trained = set(trained_prompt_ids)
    no = pd.Series(False, index=pairs.index)
    leaked = pairs["prompt_id"].isin(trained) if "prompt_id" in pairs and trained else no
    keys = {
        (c, r): score_key(model_id, c, r)
        for row in pairs[~leaked].itertuples()
        for c, r in [(row.prompt, row.response_a), (row.prompt, row.response_b)]
    }
    known = cache.get_many(list(set(keys.values()))) if cache is not None else {}
    hits = len(known)
    missing = [(c, r) for (c, r), k in keys.items() if k not in known]
    for start in range(0, len(missing), shard_size):
        chunk = missing[start : start + shard_size]
        scores = scorer([c for c, _ in chunk], [r for _, r in chunk])
        new = {keys[item]: float(s) for item, s in zip(chunk, scores, strict=True)}
        if cache is not None:
            cache.put_many(new)
        known.update(new)
    rows = []
    for row in pairs.itertuples():
        if leaked[row.Index]:
            rows.append(
                {**abstained_row(row.pair_id, "trained_on", 1), "r_a": float("nan"), "r_b": float("nan")}
            )
            continue
        r_a, r_b = known[keys[(row.prompt, row.response_a)]], known[keys[(row.prompt, row.response_b)]]
        rows.append(_labelled(row.pair_id, r_a, r_b, temperature, settings.min_confidence))
    df = pd.DataFrame(rows, columns=[*PAIR_COLUMNS, "r_a", "r_b"])
    return PreferenceJudgeResult(df, int(leaked.sum()), len(missing), hits, time.perf_counter() - t0)


def _labelled(pair_id: str, r_a: float, r_b: float, temperature: float, min_confidence: float) -> dict:
    """One pair's row from its two rewards; abstains (low_confidence) below `min_confidence` or at 0.5."""
    p_a = bradley_terry(r_a, r_b, temperature)
    confidence = abs(2 * p_a - 1)
    label = "A" if p_a > 0.5 else "B" if p_a < 0.5 else "abstain"
    reason = None
    if label == "abstain" or confidence < min_confidence:
        label, reason = "abstain", "low_confidence"
    return {
        "pair_id": pair_id,
        "label": label,
        "p_a": p_a,
        "p_chosen": max(p_a, 1 - p_a),
        "confidence": confidence,
        "vote_share": 1.0,
        "n_principles": 1,
        "n_consistent": 1,
        "abstain_reason": reason,
        "r_a": r_a,
        "r_b": r_b,
    }


def resolve_model_ref(ref: str, storage, tracking_uri: str | None, workdir: Path) -> Path:
    """A local folder for a preference-model reference: an existing local folder, a folder in pipeline
    storage, or `models:/<name>/<version>` from the MLflow registry (downloaded into `workdir`)."""
    if ref.startswith("models:/"):
        from alignment_dagster.training.artifacts import download_registered

        if not tracking_uri:
            raise ValueError(f"{ref}: an MLflow registry reference needs a tracking URI")
        with redacted_errors(f"MLflow registry {ref}"):  # MLflow's errors carry the tracking URI
            return download_registered(ref, workdir, tracking_uri, store=storage)
    local = Path(ref).expanduser()
    if local.is_dir():
        return local
    if storage.dir_exists(ref):
        return storage.local_path(ref) or storage.get_dir(ref, workdir)
    raise FileNotFoundError(
        f"preference model {ref!r}: not a local folder, not a folder in pipeline storage "
        f"({storage.url(ref)}) and not a models:/<name>/<version> reference"
    )


def judge_with_reward_model(
    constitution,
    pairs: pd.DataFrame,
    storage,
    tracking_uri: str | None,
    workdir: Path,
    *,
    shard_size: int = 256,
) -> tuple[PreferenceJudgeResult, dict[str, object]]:
    """Judge `pairs` with the constitution's `judge.preference_model`; also returns the lineage to record
    (reference, content id, and the partition and Dagster run that trained it, from its model card)."""
    from alignment_dagster.backends.identity import content_hash
    from alignment_dagster.core.shard_cache import ShardCache
    from alignment_dagster.training.artifacts import MODEL_CARD, load_reward_scorer, read_model_card
    from alignment_dagster.training.reward import RewardScorer

    settings = constitution.judge
    folder = resolve_model_ref(settings.preference_model, storage, tracking_uri, workdir)
    has_card = (folder / MODEL_CARD).is_file()
    card = read_model_card(folder) if has_card else {}
    scorer = load_reward_scorer(folder) if has_card else RewardScorer(folder)
    model_id = f"pm:{content_hash(folder)}"
    cache = ShardCache(storage, f"cache/pm-scores/{model_id.removeprefix('pm:')}")
    result = judge_with_preference_model(
        pairs,
        scorer.score,
        model_id,
        settings,
        temperature=settings.preference_model_temperature,
        trained_prompt_ids=card.get("train_prompt_ids", []),
        cache=cache,
        shard_size=shard_size,
    )
    part = card.get("partition")
    lineage = {
        "judge.preference_model": settings.preference_model,
        "judge.preference_model_id": model_id,
        "judge.preference_model_partition": (
            f"{part.get('constitution')}|{part.get('blend')}" if isinstance(part, dict) else "unknown"
        ),
        "judge.preference_model_dagster_run": card.get("dagster_run_id", "unknown"),
        "judge.preference_model_trained_on_excluded": result.n_trained_on,
    }
    return result, lineage
