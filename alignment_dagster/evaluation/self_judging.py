"""Self-preference in evals: does the judge favour replies of its own model family? Plain functions.

Where the judge and the policy share a model or family, evals says so. It measures the effect only where a
reference exists: pairs of the policy's own greedy reply against the reply the humans preferred on HH prompts
(imported pairs with known labels), judged by this judge and by a reference judge of another family (a
preference model, e.g. a reward model trained on human labels only). Without both, the figure is reported
as not measured, with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd

from alignment_dagster.judge.bias import Relation, SelfPreference, self_preference
from alignment_dagster.judge.preference_model import bradley_terry

ReferenceScorer = Callable[[Sequence[str], Sequence[str]], list[float]]  # (conversations, replies) -> reward


@dataclass(frozen=True)
class ReferenceJudge:
    """A judge of another family for the self-preference measurement: its name and reward scorer."""

    name: str
    score: ReferenceScorer


def reference_replies(response_pairs: pd.DataFrame, known_labels: pd.DataFrame, n: int) -> pd.DataFrame:
    """Up to `n` imported pairs with an A/B known label (in pair_id order, so the same ones every run): the
    conversation and the reply the humans preferred (prompt_id, prompt, category, reference)."""
    if n <= 0 or not len(response_pairs) or not len(known_labels):
        return pd.DataFrame(columns=["prompt_id", "prompt", "category", "reference"])
    labels = known_labels[known_labels["label"].isin(["A", "B"])][["pair_id", "label"]]
    rows = response_pairs.merge(labels, on="pair_id").sort_values("pair_id")
    rows = rows.drop_duplicates("prompt_id").head(n)
    sides = zip(rows["response_a"], rows["response_b"], rows["label"], strict=True)
    preferred = [a if lab == "A" else b for a, b, lab in sides]
    return pd.DataFrame(
        {
            "prompt_id": list(rows["prompt_id"]),
            "prompt": list(rows["prompt"]),
            "category": list(rows["category"]),
            "reference": preferred,
        }
    )


def own_vs_reference_pairs(references: pd.DataFrame, own: Sequence[str]) -> pd.DataFrame:
    """Judge pairs: the policy's own reply as A, the humans' preferred reply as B (both orders are judged)."""
    from alignment_dagster.data.pairs import pair_id_for

    df = references.copy()
    df["response_a"], df["response_b"] = list(own), list(references["reference"])
    df["pair_id"] = [
        pair_id_for(p, a, b) for p, a, b in zip(df["prompt"], df["response_a"], df["response_b"], strict=True)
    ]
    return df


def measured_self_preference(
    relation: Relation, pairs: pd.DataFrame, judge_p_a: pd.Series, reference: ReferenceJudge
) -> SelfPreference:
    """This judge's p_a (own reply = A, by pair_id) against the reference judge's Bradley-Terry probability
    from its two rewards, on the same own-vs-reference pairs."""
    own = reference.score(list(pairs["prompt"]), list(pairs["response_a"]))
    other = reference.score(list(pairs["prompt"]), list(pairs["response_b"]))
    ref_p = [bradley_terry(a, b) for a, b in zip(own, other, strict=True)]
    this_p = [float(judge_p_a[pid]) for pid in pairs["pair_id"]]
    return self_preference(relation, this_p, ref_p, reference=reference.name)


def load_reference_judge(ref: str, storage, tracking_uri: str | None, workdir) -> ReferenceJudge:
    """A preference model as the reference judge, from the references `judge.preference_model` takes (a
    folder, a folder in pipeline storage, `models:/<name>/<version>`); named by its content hash."""
    from pathlib import Path

    from alignment_dagster.backends.identity import content_hash
    from alignment_dagster.judge.preference_model import resolve_model_ref
    from alignment_dagster.training.artifacts import MODEL_CARD, load_reward_scorer
    from alignment_dagster.training.reward import RewardScorer

    folder = resolve_model_ref(ref, storage, tracking_uri, Path(workdir))
    scorer = load_reward_scorer(folder) if (folder / MODEL_CARD).is_file() else RewardScorer(folder)
    return ReferenceJudge(f"preference model {ref} (pm:{content_hash(folder)})", scorer.score)
