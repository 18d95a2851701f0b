"""Measuring a judge against known human labels (plain functions)."""

from __future__ import annotations

import pandas as pd


def agreement_metrics(principles: pd.DataFrame, pairs: pd.DataFrame, labels: pd.DataFrame,
                      responses: pd.DataFrame | None = None) -> dict[str, float]:
    """Judge-vs-human figures on pairs with a known A/B label.

    agreement: debiased labels vs humans, abstentions excluded; coverage: share not abstained;
    agreement_forced: the debiased p_a's side on every pair (ties at 0.5 count as misses);
    agreement_single_order: forward order only (weighted p_a_forward), no debiasing, no abstention;
    position_consistency: share of principle votes where both orders agree; first_position_win_rate: share
    of judge prompts (both orders) won by the reply shown first; shorter_reply_agreement: the baseline
    "prefer the shorter reply" on the same pairs (when `responses` is given).
    """
    human = labels[labels["label"].isin(["A", "B"])].set_index("pair_id")["label"]
    judged = pairs.set_index("pair_id").loc[human.index]
    labelled = judged[judged["label"].isin(["A", "B"])]
    n = len(judged)
    forced = judged["p_a"].map(lambda p: "A" if p > 0.5 else "B" if p < 0.5 else "tie")
    votes = principles[principles["pair_id"].isin(human.index)]
    weighted_fwd = (votes["p_a_forward"] * votes["weight"]).groupby(votes["pair_id"]).sum() / votes.groupby("pair_id")["weight"].sum()
    single = weighted_fwd.loc[human.index].map(lambda p: "A" if p > 0.5 else "B" if p < 0.5 else "tie")
    out = {
        "n": n,
        "agreement": float((labelled["label"] == human.loc[labelled.index]).mean()) if len(labelled) else float("nan"),
        "coverage": len(labelled) / n if n else float("nan"),
        "agreement_forced": float((forced == human).mean()) if n else float("nan"),
        "agreement_single_order": float((single == human).mean()) if n else float("nan"),
        "position_consistency": float(votes["order_consistent"].mean()) if len(votes) else float("nan"),
        "first_position_win_rate": float(((votes["p_a_forward"] > 0.5).sum() + (votes["p_a_backward"] < 0.5).sum())
                                         / (2 * len(votes))) if len(votes) else float("nan"),
    }
    if responses is not None:
        r = responses.set_index("pair_id").loc[human.index]
        shorter = (r["response_a"].str.len() < r["response_b"].str.len()).map({True: "A", False: "B"})
        out["shorter_reply_agreement"] = float((shorter == human).mean()) if n else float("nan")
    return out
