"""Eval statistics: win/tie/loss with confidence intervals, refusals, lengths, cost. Plain functions."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd

Z95 = 1.959963984540054

# Phrases that open or carry a refusal; matched case-insensitively near the start of a reply.
REFUSAL_PATTERNS = [
    r"\bI(?:'m| am) (?:sorry|afraid)\b",
    r"\bI (?:can(?:no|')t|cannot|won't|will not|am not able to|'m not able to|am unable to|'m unable to)\b",
    r"\bI (?:must|have to) (?:decline|refuse)\b",
    r"\bAs an AI\b",
    r"\b(?:not|never) (?:able|going) to (?:help|assist|provide)\b",
    r"\bI (?:don't|do not) (?:feel comfortable|think I should)\b",
]
_REFUSAL = re.compile("|".join(REFUSAL_PATTERNS), re.IGNORECASE)


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n (well-behaved at 0, n and small n)."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class WinRate:
    n: int
    wins: int
    ties: int
    losses: int

    @property
    def win_rate(self) -> float:
        return self.wins / self.n if self.n else float("nan")

    @property
    def tie_rate(self) -> float:
        return self.ties / self.n if self.n else float("nan")

    @property
    def loss_rate(self) -> float:
        return self.losses / self.n if self.n else float("nan")

    @property
    def win_ci(self) -> tuple[float, float]:
        return wilson_interval(self.wins, self.n)

    @property
    def loss_ci(self) -> tuple[float, float]:
        return wilson_interval(self.losses, self.n)

    @property
    def score(self) -> float:
        """Wins plus half the ties: 0.5 means no difference."""
        return (self.wins + 0.5 * self.ties) / self.n if self.n else float("nan")

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        lo, hi = self.win_ci
        return {
            f"{prefix}n": self.n, f"{prefix}win_rate": self.win_rate, f"{prefix}tie_rate": self.tie_rate,
            f"{prefix}loss_rate": self.loss_rate, f"{prefix}win_ci_low": lo, f"{prefix}win_ci_high": hi,
            f"{prefix}score": self.score,
        }


def outcome(label: str, policy_is: str) -> str:
    """'win'/'loss'/'tie' for the policy given a judge label (A/B/abstain) and the policy's slot."""
    if label not in ("A", "B"):
        return "tie"
    return "win" if label == policy_is else "loss"


def win_rate(outcomes: Iterable[str]) -> WinRate:
    outs = list(outcomes)
    bad = set(outs) - {"win", "tie", "loss"}
    if bad:
        raise ValueError(f"outcomes must be win/tie/loss, got {sorted(bad)}")
    return WinRate(len(outs), outs.count("win"), outs.count("tie"), outs.count("loss"))


def win_rates_by(df: pd.DataFrame, by: str, outcome_col: str = "outcome") -> pd.DataFrame:
    """One row per group with n, rates and the 95% Wilson interval of the win rate."""
    rows = []
    for key, group in df.groupby(by, sort=True):
        rows.append({by: key, **win_rate(group[outcome_col]).as_dict()})
    return pd.DataFrame(rows)


def is_refusal(text: str, window: int = 200) -> bool:
    """Whether a reply refuses: a refusal phrase within its first `window` characters."""
    return bool(_REFUSAL.search(text[:window]))


def refusal_rate(texts: Sequence[str]) -> float:
    return sum(map(is_refusal, texts)) / len(texts) if texts else float("nan")


def length_stats(texts: Sequence[str]) -> dict[str, float]:
    if not texts:
        return {"mean": float("nan"), "p50": float("nan"), "p90": float("nan")}
    s = pd.Series([len(t) for t in texts], dtype=float)
    return {"mean": float(s.mean()), "p50": float(s.quantile(0.5)), "p90": float(s.quantile(0.9))}


@dataclass(frozen=True)
class Prices:
    """Configurable unit prices, so cost shows next to what a run bought."""

    per_1k_prompt_tokens: float = 0.0
    per_1k_generated_tokens: float = 0.0
    per_accelerator_hour: float = 0.0
    per_human_label: float = 0.0


def estimated_cost(prompt_tokens: int, generated_tokens: int, accelerator_seconds: float, human_labels: int,
                   prices: Prices) -> float:
    return (
        prompt_tokens / 1000 * prices.per_1k_prompt_tokens
        + generated_tokens / 1000 * prices.per_1k_generated_tokens
        + accelerator_seconds / 3600 * prices.per_accelerator_hour
        + human_labels * prices.per_human_label
    )
