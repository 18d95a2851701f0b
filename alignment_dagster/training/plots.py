"""PNG plots of training results (for Dagster metadata and MLflow)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from alignment_dagster.core.reporting import figure_png

DPO_CURVES = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins")


def reward_scatter_png(sets: Mapping[str, tuple[Sequence[float], Sequence[float]]], title: str) -> bytes:
    """Chosen vs rejected reward per pair, one colour per evaluation set; above the diagonal: ranked right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    lo, hi = 0.0, 0.0
    for name, (chosen, rejected) in sets.items():
        if not len(chosen):
            continue
        acc = sum(c > r for c, r in zip(chosen, rejected, strict=False)) / len(chosen)
        ax.scatter(rejected, chosen, s=12, alpha=0.6, label=f"{name} (n={len(chosen)}, acc={acc:.2f})")
        lo, hi = min(lo, *chosen, *rejected), max(hi, *chosen, *rejected)
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
    ax.set_xlabel("reward of rejected reply")
    ax.set_ylabel("reward of chosen reply")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    return figure_png(fig)


def training_curves(
    log_history: Sequence[Mapping[str, Any]], keys: Sequence[str] = DPO_CURVES
) -> dict[str, list]:
    """{key: [(step, value), ...]} from a Trainer's log history (only the logged training steps)."""
    curves: dict[str, list] = {k: [] for k in keys}
    for entry in log_history:
        for k in keys:
            if k in entry and "step" in entry:
                curves[k].append((int(entry["step"]), float(entry[k])))
    return curves


def curves_png(curves: Mapping[str, Sequence[tuple[int, float]]], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_rw) = plt.subplots(1, 2, figsize=(9, 3.5))
    for name, points in curves.items():
        if not points:
            continue
        ax = ax_loss if name == "loss" else ax_rw
        ax.plot([s for s, _ in points], [v for _, v in points], marker="o", ms=3, label=name)
    ax_loss.set_title("DPO loss", fontsize=9)
    ax_rw.set_title("implicit rewards", fontsize=9)
    for ax in (ax_loss, ax_rw):
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return figure_png(fig)
