"""Length-controlled win rate (as AlpacaEval 2 does): the policy's win rate against its base read off a
logistic model of the outcome at equal reply length, beside the raw win rate. Plain functions.

The model: P(policy wins) = sigmoid(b0 + b1 * tanh((len_policy - len_base) / sd)), sd the standard deviation
of the length differences, ties counted as half a win (fractional targets), fitted by maximum likelihood.
At equal length the feature is 0, so the length-controlled win rate is sigmoid(b0). A judge that rewards
verbosity moves b1, not b0: a policy that only grew longer wins raw but not length-controlled. (AlpacaEval 2
also has an instruction-difficulty term; with one base model per comparison there is nothing to fit it on.)
A bootstrap over prompts gives the interval; below `min_n` prompts the figure is n/a, never a guess.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LC_MIN_PROMPTS = 20  # below this a two-parameter fit on win/tie/loss outcomes says nothing: n/a
LC_BOOTSTRAP = 1000
OUTCOME_TARGET = {"win": 1.0, "tie": 0.5, "loss": 0.0}
# A weak penalty on the length slope only: keeps the fit finite when length separates the outcomes
# (every longer reply won), where the unpenalised slope runs off to infinity. In the textbook case of
# tests/evaluation/test_length_control.py it moves the estimate from 0.75 to 0.7494.
SLOPE_RIDGE = 1e-2


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def fit_logistic(
    x: np.ndarray, y: np.ndarray, ridge: Sequence[float] | None = None, iterations: int = 100
) -> np.ndarray:
    """Maximum-likelihood logistic regression of targets `y` in [0, 1] (fractions allowed) on the columns of
    `x` (add a column of ones for an intercept), with an optional L2 penalty per coefficient. Newton's
    method with step halving; stops when the step is below 1e-10."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    penalty = np.diag(np.asarray(ridge if ridge is not None else [0.0] * x.shape[1], dtype=float))
    beta = np.zeros(x.shape[1])

    def objective(b: np.ndarray) -> float:
        z = x @ b
        return float(np.sum(y * z - np.logaddexp(0.0, z)) - 0.5 * b @ penalty @ b)

    current = objective(beta)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(x @ beta)))
        gradient = x.T @ (y - p) - penalty @ beta
        hessian = (x * (p * (1 - p))[:, None]).T @ x + penalty
        step = np.linalg.lstsq(hessian, gradient, rcond=None)[0]
        scale = 1.0
        while scale > 1e-6 and objective(beta + scale * step) < current - 1e-12:
            scale /= 2
        beta = beta + scale * step
        current = objective(beta)
        if np.max(np.abs(scale * step)) < 1e-10:
            break
    return beta


def length_feature(differences: np.ndarray) -> np.ndarray | None:
    """tanh(d / sd(d)); None when the differences do not vary (length cannot be told from the model)."""
    sd = float(np.std(differences, ddof=1)) if len(differences) > 1 else 0.0
    if sd == 0.0:
        return None
    return np.tanh(differences / sd)


def lc_fit(targets: np.ndarray, differences: np.ndarray) -> tuple[float, float] | None:
    """(length-controlled win rate, length slope b1), or None when it cannot be fitted. Replies of equal
    length everywhere need no control: the win rate at equal length is the raw score, slope 0."""
    if not np.any(differences):
        return float(np.mean(targets)), 0.0
    feature = length_feature(differences)
    if feature is None:
        return None
    x = np.column_stack([np.ones(len(feature)), feature])
    b0, b1 = fit_logistic(x, targets, ridge=[0.0, SLOPE_RIDGE])
    return sigmoid(b0), float(b1)


@dataclass(frozen=True)
class LengthControlled:
    n: int
    min_n: int
    raw: float  # wins + ties / 2 over n: the raw win rate, ties counted half like the model's targets
    win_rate: float | None  # None: n/a (reason says why)
    ci: tuple[float, float] | None  # 95% percentile bootstrap over prompts
    slope: float | None  # b1: > 0 when longer replies win more often
    reason: str

    def metrics(self, prefix: str = "judge.lc_") -> dict[str, float]:
        """Flat numbers; n/a figures are NaN (left out of MLflow), the reason goes in a tag."""
        nan = float("nan")
        lo, hi = self.ci or (nan, nan)
        return {
            f"{prefix}n": self.n,
            f"{prefix}min_n": self.min_n,
            f"{prefix}raw_score": self.raw,
            f"{prefix}win_rate": nan if self.win_rate is None else self.win_rate,
            f"{prefix}ci_low": lo,
            f"{prefix}ci_high": hi,
            f"{prefix}length_slope": nan if self.slope is None else self.slope,
        }


def length_controlled_win_rate(
    outcomes: Sequence[str],
    policy_lengths: Sequence[float],
    base_lengths: Sequence[float],
    *,
    min_n: int = LC_MIN_PROMPTS,
    n_boot: int = LC_BOOTSTRAP,
    seed: int = 0,
) -> LengthControlled:
    """The length-controlled win rate of win/tie/loss `outcomes` with each prompt's reply lengths."""
    if not len(outcomes) == len(policy_lengths) == len(base_lengths):
        raise ValueError(
            f"{len(outcomes)} outcomes, {len(policy_lengths)} policy and {len(base_lengths)} base lengths"
        )
    bad = set(outcomes) - set(OUTCOME_TARGET)
    if bad:
        raise ValueError(f"outcomes must be win/tie/loss, got {sorted(bad)}")
    n = len(outcomes)
    targets = np.array([OUTCOME_TARGET[o] for o in outcomes])
    raw = float(targets.mean()) if n else float("nan")
    if n < min_n:
        return LengthControlled(n, min_n, raw, None, None, None, f"n/a: {n} prompts, {min_n} needed")
    differences = np.asarray(policy_lengths, dtype=float) - np.asarray(base_lengths, dtype=float)
    fitted = lc_fit(targets, differences)
    if fitted is None:
        reason = "n/a: every policy reply differs from the base's by the same length"
        return LengthControlled(n, min_n, raw, None, None, None, reason)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        again = lc_fit(targets[idx], differences[idx])
        if again is not None:
            boots.append(again[0])
    ci = (float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))) if boots else None
    reason = f"logistic on tanh(length difference / sd), {len(boots)} bootstrap resamples over prompts"
    return LengthControlled(n, min_n, raw, fitted[0], ci, fitted[1], reason)
