"""Judge biases beyond position: a preference for the longer reply, for its own model family's replies, and
the independent votes an ensemble of correlated judges really holds. Plain functions; the `length_bias`
asset check, `preference_dataset`, `ai_preferences` and `evals` report them.

Length bias is measured against humans on the same pairs, never against 50%: humans prefer the longer reply
too, at some rate, and only the judge's *excess* over that rate is a bias. The pairs are the signal gate's
(the audit slice and the known labels, `judge.gate.gate_comparisons`); lengths are in the judge's tokens
where its tokenizer is at hand, else whitespace-separated words (`whitespace_tokens`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from alignment_dagster.evaluation.length_control import fit_logistic, length_feature
from alignment_dagster.judge.gate import binomial_sf, gate_comparisons

WHITESPACE_UNIT = "whitespace tokens"
TokenCounter = Callable[[Sequence[str]], list[int] | None]


def whitespace_tokens(texts: Sequence[str]) -> list[int]:
    """Tokens as whitespace-separated words: the length unit where no tokenizer is at hand."""
    return [len(t.split()) for t in texts]


def reply_lengths(
    pairs: pd.DataFrame, count_tokens: TokenCounter | None = None, unit: str = "judge tokens"
) -> tuple[pd.DataFrame, str]:
    """(pair_id, len_a, len_b) per pair and the unit: `count_tokens` (a tokenizer) when it gives counts,
    else `whitespace_tokens`."""
    a, b = list(pairs["response_a"]), list(pairs["response_b"])
    counted = count_tokens(a + b) if count_tokens is not None and len(pairs) else None
    if counted is None:
        counted, unit = whitespace_tokens(a + b), WHITESPACE_UNIT
    frame = pd.DataFrame(
        {"pair_id": list(pairs["pair_id"]), "len_a": counted[: len(a)], "len_b": counted[len(a) :]}
    )
    return frame.astype({"len_a": "int64", "len_b": "int64"}), unit


def longer_reply(len_a: float, len_b: float, min_fraction: float = 0.1, min_tokens: int = 3) -> str | None:
    """ "A" or "B", or None when the lengths are near-equal: within `min_tokens` or `min_fraction` of the
    longer reply, whichever is more. Near-equal pairs say nothing about length and are left out."""
    if abs(len_a - len_b) <= max(min_tokens, min_fraction * max(len_a, len_b)):
        return None
    return "A" if len_a > len_b else "B"


@dataclass(frozen=True)
class PairedExcess:
    """How much more often a judge does something (picks the longer reply, its own) than a reference does on
    the same pairs, with the one-sided exact McNemar test (is the judge's rate above the reference's?)."""

    n: int
    judge_count: int
    reference_count: int
    judge_only: int  # pairs where the judge did it and the reference did not
    reference_only: int
    p_value: float  # P(X >= judge_only), X ~ Binomial(judge_only + reference_only, 1/2)

    @property
    def judge_rate(self) -> float:
        return self.judge_count / self.n if self.n else float("nan")

    @property
    def reference_rate(self) -> float:
        return self.reference_count / self.n if self.n else float("nan")

    @property
    def excess(self) -> float:
        return self.judge_rate - self.reference_rate


def paired_excess(judge: Sequence[bool], reference: Sequence[bool]) -> PairedExcess:
    if len(judge) != len(reference):
        raise ValueError(f"{len(judge)} judge flags vs {len(reference)} reference flags")
    j_only = sum(bool(j) and not r for j, r in zip(judge, reference, strict=True))
    r_only = sum(bool(r) and not j for j, r in zip(judge, reference, strict=True))
    p = binomial_sf(j_only, j_only + r_only) if j_only + r_only else 1.0
    return PairedExcess(
        len(judge), int(sum(map(bool, judge))), int(sum(map(bool, reference))), j_only, r_only, p
    )


LENGTH_COLUMNS = [
    "pair_id",
    "source",
    "judge",
    "human",
    "len_a",
    "len_b",
    "longer",
    "judge_longer",
    "human_longer",
]


def length_comparisons(
    comparisons: pd.DataFrame, lengths: pd.DataFrame, min_fraction: float = 0.1, min_tokens: int = 3
) -> tuple[pd.DataFrame, Counter]:
    """The judge-human comparisons (`gate_comparisons` rows) the length test counts, and what it left out:
    `near_equal` lengths, `no_lean` (the judge's p_a is exactly 0.5), `no_length` (no lengths for the pair).

    judge_longer / human_longer: whether the judge's forced lean / the human label is the longer reply."""
    left_out: Counter = Counter()
    by_pair = lengths.set_index("pair_id")[["len_a", "len_b"]].to_dict("index") if len(lengths) else {}
    rows = []
    for r in comparisons.itertuples(index=False):
        if r.pair_id not in by_pair:
            left_out["no_length"] += 1
            continue
        la, lb = by_pair[r.pair_id]["len_a"], by_pair[r.pair_id]["len_b"]
        longer = longer_reply(la, lb, min_fraction, min_tokens)
        if longer is None:
            left_out["near_equal"] += 1
        elif r.judge not in ("A", "B"):
            left_out["no_lean"] += 1
        else:
            rows.append(
                (r.pair_id, r.source, r.judge, r.human, la, lb, longer, r.judge == longer, r.human == longer)
            )
    return pd.DataFrame(rows, columns=LENGTH_COLUMNS), left_out


@dataclass(frozen=True)
class LengthBiasReport:
    """The length_bias check on one judging run: verdict, the paired test, what was left out and why."""

    verdict: Literal["pass", "fail", "undecided"]
    test: PairedExcess
    n_references: int  # judge-human comparisons before anything was left out
    left_out: dict[str, int]  # near_equal, no_lean, no_length, trained_on
    n_audit: int
    n_known: int
    max_excess: float
    alpha: float
    min_n: int
    unit: str
    blocking: bool = False  # the constitution makes a failure refuse AI-sourced blends
    override: str | None = None

    @property
    def blocks_ai_labels(self) -> bool:
        return self.verdict == "fail" and self.blocking and not self.override

    @property
    def reason(self) -> str:
        t = self.test
        skipped = ", ".join(f"{v} {k}" for k, v in sorted(self.left_out.items()) if v) or "none"
        if self.verdict == "undecided":
            return (
                f"only {t.n} judge-human pairs with a longer reply ({self.min_n} needed to decide; "
                f"left out: {skipped})"
            )
        text = (
            f"judge picks the longer reply on {t.judge_rate:.3f} of n={t.n} pairs, humans on "
            f"{t.reference_rate:.3f}: excess {t.excess:+.3f} (max {self.max_excess}), one-sided McNemar "
            f"p={t.p_value:.3g} (alpha {self.alpha}); lengths in {self.unit}; left out: {skipped}"
        )
        if self.verdict == "fail" and self.blocking:
            text += (
                f"; AI labels used anyway by the override {self.override!r}"
                if self.override
                else "; AI-sourced blends are blocked (judge.length_bias.block_ai_labels)"
            )
        return text

    def metrics(self) -> dict[str, float | int]:
        t = self.test
        return {
            "n": t.n,
            "judge_longer_rate": t.judge_rate,
            "human_longer_rate": t.reference_rate,
            "excess": t.excess,
            "judge_only": t.judge_only,
            "human_only": t.reference_only,
            "p_value": t.p_value,
            "n_references": self.n_references,
            **{f"left_out_{k}": int(v) for k, v in sorted(self.left_out.items())},
            "n_audit": self.n_audit,
            "n_known": self.n_known,
            "max_excess": self.max_excess,
            "alpha": self.alpha,
            "min_n": self.min_n,
        }

    def metadata(self) -> dict[str, object]:
        numbers = {k: float(v) for k, v in self.metrics().items() if v == v}
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            **numbers,
            "unit": self.unit,
            "blocks_ai_labels": self.blocks_ai_labels,
        }


def length_bias(
    comparisons: pd.DataFrame,
    lengths: pd.DataFrame,
    settings,
    unit: str = WHITESPACE_UNIT,
    *,
    trained_on: int = 0,
    override: str | None = None,
) -> LengthBiasReport:
    """The verdict: undecided below `settings.min_n` counted pairs; fail when the judge's excess preference
    for the longer reply over the humans' is significant (one-sided McNemar, `settings.alpha`) and above
    `settings.max_excess`; pass otherwise. `settings`: a `judge.length_bias` (LengthBiasSettings)."""
    rows, left_out = length_comparisons(
        comparisons, lengths, settings.near_equal_fraction, settings.near_equal_tokens
    )
    left_out["trained_on"] += trained_on
    test = paired_excess(list(rows["judge_longer"]), list(rows["human_longer"]))
    if test.n < settings.min_n:
        verdict = "undecided"
    elif test.p_value < settings.alpha and test.excess > settings.max_excess:
        verdict = "fail"
    else:
        verdict = "pass"
    n = len(comparisons)
    source = comparisons["source"] if n else pd.Series(dtype=object)
    return LengthBiasReport(
        verdict,
        test,
        n + trained_on,
        {k: int(v) for k, v in left_out.items()},
        int((source == "audit").sum()),
        int((source == "known").sum()),
        settings.max_excess,
        settings.alpha,
        settings.min_n,
        unit,
        settings.block_ai_labels,
        override.strip() if override and override.strip() else None,
    )


def length_bias_for_version(
    prefs: pd.DataFrame,
    edge_cases: pd.DataFrame,
    human: pd.DataFrame,
    known_labels: pd.DataFrame,
    pairs: pd.DataFrame,
    settings,
    override: str | None = None,
) -> LengthBiasReport:
    """The check for one constitution version from its stored assets. Lengths are the judge's (`len_a`,
    `len_b` of ai_preferences, counted where its tokenizer was at hand), else whitespace tokens of the pairs.
    Pairs a preference-model judge trained on (`trained_on`) are left out and counted: held-out pairs only."""
    trained = (
        prefs["abstain_reason"] == "trained_on"
        if "abstain_reason" in prefs
        else pd.Series(False, prefs.index)
    )
    judged = prefs[~trained]
    audit = edge_cases.loc[edge_cases["audit"].astype(bool), "pair_id"] if len(edge_cases) else []
    comparisons = gate_comparisons(judged, human, audit, known_labels)
    if {"len_a", "len_b", "length_unit"} <= set(prefs.columns) and len(prefs):
        lengths, unit = prefs[["pair_id", "len_a", "len_b"]], str(prefs["length_unit"].iloc[0])
    else:  # ai_preferences stored before it kept the judge's lengths
        lengths, unit = reply_lengths(pairs[pairs["pair_id"].isin(comparisons["pair_id"])])
    return length_bias(comparisons, lengths, settings, unit, trained_on=int(trained.sum()), override=override)


# --- self-preference ---------------------------------------------------------------------------------------

# Checked in this order against the model's name (lower case); else the name's leading letters.
MODEL_FAMILIES = (
    ("smollm", "smollm"),
    ("llama", "llama"),
    ("mixtral", "mistral"),
    ("mistral", "mistral"),
    ("qwen", "qwen"),
    ("gemma", "gemma"),
    ("phi", "phi"),
    ("gpt", "gpt"),
    ("claude", "claude"),
    ("deepseek", "deepseek"),
    ("olmo", "olmo"),
    ("minilm", "minilm"),
)
Relation = Literal["same model", "same family", "other family"]


def model_name(identity: str) -> str:
    """The model's name in a backend identity (`engine:name@revision`, a policy's `+adapter@hash` after it):
    no engine, revision, adapter or folder, lower case."""
    text = identity.split("+", 1)[0]
    text = text.split(":", 1)[1] if re.match(r"^[a-z_]+:", text) else text
    return text.rsplit("@", 1)[0].rstrip("/").rsplit("/", 1)[-1].lower()


def model_family(identity: str) -> str:
    name = model_name(identity)
    for needle, family in MODEL_FAMILIES:
        if needle in name:
            return family
    return re.match(r"[a-z]*", name).group(0) or name


def judge_relation(judge_identity: str, policy_identity: str) -> Relation:
    """Whether the judge is the policy's own (base) model, of its family, or of another family: a judge
    grading its own family's replies is suspect of self-preference."""
    if model_name(judge_identity) == model_name(policy_identity):
        return "same model"
    if model_family(judge_identity) == model_family(policy_identity):
        return "same family"
    return "other family"


@dataclass(frozen=True)
class SelfPreference:
    """How much more this judge prefers the policy's own replies (against reference replies) than a
    reference judge of another family does on the same pairs; `not measured` without a reference."""

    relation: Relation
    status: Literal["measured", "not measured"]
    reason: str
    test: PairedExcess | None = None
    left_out: int = 0  # pairs where either judge did not lean

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {"self_preference.same_family": float(self.relation != "other family")}
        if self.test is not None:
            t = self.test
            out.update(
                {
                    "self_preference.n": t.n,
                    "self_preference.judge_own_rate": t.judge_rate,
                    "self_preference.reference_own_rate": t.reference_rate,
                    "self_preference.excess": t.excess,
                    "self_preference.p_value": t.p_value,
                    "self_preference.left_out": self.left_out,
                }
            )
        return out

    def tags(self) -> dict[str, str]:
        return {
            "judge.self_preference": self.relation,
            "self_preference.status": self.status,
            "self_preference.reason": self.reason[:4000],
        }


def self_preference(
    relation: Relation,
    judge_p_own: Sequence[float] | None = None,
    reference_p_own: Sequence[float] | None = None,
    reference: str = "",
    why_not: str = "no reference judge of another family and no own-vs-reference pairs",
) -> SelfPreference:
    """This judge's and the reference judge's probabilities that the policy's own reply is the better one,
    per pair (own reply vs a reference reply, e.g. the HH reply on HH prompts). None: no reference exists,
    reported as not measured. A pair where either judge sits exactly at 0.5 is left out and counted."""
    if judge_p_own is None or reference_p_own is None:
        return SelfPreference(relation, "not measured", f"not measured: {why_not}")
    if len(judge_p_own) != len(reference_p_own):
        raise ValueError(f"{len(judge_p_own)} judge vs {len(reference_p_own)} reference probabilities")
    kept = [(j, r) for j, r in zip(judge_p_own, reference_p_own, strict=True) if j != 0.5 and r != 0.5]
    test = paired_excess([j > 0.5 for j, _ in kept], [r > 0.5 for _, r in kept])
    reason = (
        f"this judge prefers the policy's own reply on {test.judge_rate:.3f} of n={test.n} pairs, the "
        f"reference judge ({reference}) on {test.reference_rate:.3f}: excess {test.excess:+.3f}, one-sided "
        f"McNemar p={test.p_value:.3g}"
    )
    return SelfPreference(relation, "measured", reason, test, len(judge_p_own) - len(kept))


# --- ensembles ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnsembleSize:
    n_judges: int
    n_pairs: int  # pairs every member scored
    mean_correlation: float  # mean pairwise Pearson correlation of the members' p_a; NaN: undefined
    effective_judges: float  # n / (1 + (n - 1) * rho), rho clipped to [0, 1]

    def metrics(self) -> dict[str, float]:
        return {
            "ensemble.n_judges": self.n_judges,
            "ensemble.n_pairs": self.n_pairs,
            "ensemble.mean_correlation": self.mean_correlation,
            "ensemble.effective_judges": self.effective_judges,
        }


def effective_judges(n: int, mean_correlation: float) -> float:
    """Independent votes in an ensemble of `n` judges whose votes correlate `mean_correlation` on average:
    n / (1 + (n - 1) * rho). Negative correlation is clipped to 0: it would claim more independent
    votes than there are judges."""
    if mean_correlation != mean_correlation:
        return float("nan")
    rho = min(1.0, max(0.0, mean_correlation))
    return n / (1 + (n - 1) * rho)


def ensemble_size(votes: pd.DataFrame) -> EnsembleSize:
    """`votes`: one column per ensemble member (its per-pair p_a), one row per pair; rows with a missing
    vote are dropped. A member whose votes never vary correlates with nothing: its pairs are undefined and
    left out of the mean (all undefined: NaN)."""
    complete = votes.dropna()
    n = votes.shape[1]
    corr = []
    values = complete.to_numpy(dtype=float)
    for i in range(n):
        for j in range(i + 1, n):
            a, b = values[:, i], values[:, j]
            if len(a) > 1 and a.std() > 0 and b.std() > 0:
                corr.append(float(np.corrcoef(a, b)[0, 1]))
    rho = float(np.mean(corr)) if corr else float("nan")
    return EnsembleSize(n, len(complete), rho, effective_judges(n, rho))


def member_votes(principles: pd.DataFrame, extra: dict[str, pd.Series] | None = None) -> pd.DataFrame:
    """Each LLM template's per-pair p_a (weight-averaged over principles, as the aggregate is), one column
    per template version, plus `extra` members (e.g. a preference model's p_a by pair_id)."""
    columns: dict[str, pd.Series] = {}
    if len(principles):
        weighted = principles.assign(wp=principles["weight"] * principles["p_a"])
        for version, g in weighted.groupby("template_version", sort=True):
            sums = g.groupby("pair_id")[["wp", "weight"]].sum()
            columns[str(version)] = sums["wp"] / sums["weight"]
    columns.update(extra or {})
    return pd.DataFrame(columns)


# --- optional length debiasing of AI labels ----------------------------------------------------------------


@dataclass(frozen=True)
class DebiasResult:
    """Did recalibrating the judge with a length term raise its agreement with humans on held-out pairs?"""

    n: int  # held-out pairs scored (each pair held out once, 2-fold)
    agreement_before: float
    agreement_after: float
    gained: int  # held-out pairs only the debiased lean gets right
    lost: int
    p_value: float  # one-sided exact McNemar: after better than before
    length_weight: float  # the length coefficient fitted on all pairs (< 0: the judge over-rewards length)
    kept: bool
    reason: str


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(q / (1 - q))


def _debias_fit(logit_p: np.ndarray, feature: np.ndarray, human_a: np.ndarray) -> np.ndarray:
    # No intercept: A/B slots are assigned at random, so a slot preference is not something to learn.
    return fit_logistic(np.column_stack([logit_p, feature]), human_a, ridge=[1e-6, 1e-6])


def length_debias(
    p_a: Sequence[float],
    len_a: Sequence[float],
    len_b: Sequence[float],
    human: Sequence[str],
    *,
    alpha: float = 0.05,
    folds: int = 2,
) -> DebiasResult:
    """Length debiasing, kept only if it measurably helps: the human label modelled as
    sigmoid(c1 * logit(p_a) + c2 * tanh(d / sd)) (d = len_a - len_b), fitted on all folds but one and scored
    on the held-out fold (pairs assigned to folds by position), so each pair is predicted by a model that
    never saw it. Kept when the held-out agreement of the debiased lean beats the judge's own lean
    significantly (one-sided exact McNemar, `alpha`); otherwise the report says it did not."""
    p, h = np.asarray(p_a, dtype=float), np.asarray([x == "A" for x in human], dtype=float)
    feature = length_feature(np.asarray(len_a, dtype=float) - np.asarray(len_b, dtype=float))
    n = len(p)
    if feature is None or n < 2 * folds:
        return DebiasResult(n, float("nan"), float("nan"), 0, 0, 1.0, 0.0, False, "not fitted: too few pairs")
    lp, fold = _logit(p), np.arange(n) % folds
    before = (lp > 0) == (h == 1)
    after = np.zeros(n, dtype=bool)
    for k in range(folds):
        c = _debias_fit(lp[fold != k], feature[fold != k], h[fold != k])
        after[fold == k] = ((c[0] * lp[fold == k] + c[1] * feature[fold == k]) > 0) == (h[fold == k] == 1)
    test = paired_excess(list(after), list(before))
    weight = float(_debias_fit(lp, feature, h)[1])
    kept = test.p_value < alpha and test.excess > 0
    verdict = "raised" if kept else "did not measurably raise"
    reason = (
        f"length debiasing {verdict} held-out agreement with humans: {test.reference_rate:.3f} -> "
        f"{test.judge_rate:.3f} on n={n} ({folds}-fold), {test.judge_only} pairs gained / "
        f"{test.reference_only} lost, one-sided McNemar p={test.p_value:.3g}"
    )
    return DebiasResult(
        n,
        test.reference_rate,
        test.judge_rate,
        test.judge_only,
        test.reference_only,
        test.p_value,
        weight,
        kept,
        reason,
    )
