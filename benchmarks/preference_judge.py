"""A judge with signal: a MiniLM preference model trained on half of the HH dev file, judging the other half,
next to the embedded SmolLM2 LLM judge; then the routing benchmark rerun with the preference-model judge.

    .venv/bin/python benchmarks/preference_judge.py [--epochs 1] [--llm-pairs 80] \
        [--plot benchmarks/routing-pm.png]

The dev file's pairs are split by position: the first half is judged, the second half trains the reward
model (`training.reward.train_reward_model`, MiniLM, RewardTrainer; no prompt of the judged half is in
training, which the leakage guard also enforces through the model card). Both judges are scored against
the dataset's human labels: agreement (labelled pairs, abstentions excluded), coverage, forced agreement
(every pair gets the side of its p_a), and the judge signal gate's verdict (one-sided binomial on the
same comparisons the `judge_signal` asset check uses). The LLM judge runs on the first `--llm-pairs`
judged pairs only (about 0.5 s per judge prompt on 2 CPU cores; `benchmarks/routing.py`'s disk cache is
reused, so after that benchmark it makes no model calls); the preference model on all of them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from routing import DATA, judge, markdown, plot, run_benchmark  # noqa: E402

from alignment_dagster.data.pairs import import_pairs
from alignment_dagster.judge.gate import gate_comparisons, judge_gate
from alignment_dagster.judge.preference_model import judge_with_preference_model
from alignment_dagster.specs.blend import parse_blend
from alignment_dagster.specs.constitution import load_constitution
from alignment_dagster.training.artifacts import write_model_card
from alignment_dagster.training.reward import RewardScorer, RewardTrainingConfig, train_reward_model


def figures(prefs: pd.DataFrame, known: pd.DataFrame, constitution) -> dict:
    truth = known.set_index("pair_id")["label"]
    labelled = prefs[prefs["label"].isin(["A", "B"])]
    agree = (
        (labelled["label"] == truth.loc[labelled["pair_id"]].values).mean() if len(labelled) else float("nan")
    )
    forced = sum(
        0.5 if r.p_a == 0.5 else float(("A" if r.p_a > 0.5 else "B") == truth[r.pair_id])
        for r in prefs.itertuples()
    ) / len(prefs)
    gate = judge_gate(
        gate_comparisons(prefs, pd.DataFrame(), [], known),
        alpha=constitution.judge.gate.alpha,
        min_n=constitution.judge.gate.min_n,
    )
    return {
        "pairs": len(prefs),
        "coverage": len(labelled) / len(prefs),
        "agreement": agree,
        "forced_agreement": forced,
        "gate": gate.verdict,
        "gate_p": gate.gate.p_value,
        "kappa": gate.kappa,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--llm-pairs", type=int, default=80)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--constitution", default=str(REPO / "constitutions" / "constitutional-ai.yaml"))
    ap.add_argument("--blend", default=str(REPO / "blends" / "hybrid.yaml"))
    ap.add_argument("--cache", default=str(REPO / ".alignment" / "benchmarks" / "routing"))
    ap.add_argument("--plot", default=str(REPO / "benchmarks" / "routing-pm.png"))
    args = ap.parse_args(argv)

    imported = import_pairs([args.data], lambda p: Path(p).read_bytes())
    pairs = imported.pairs.reset_index(drop=True).assign(
        prompt_id=lambda d: [f"dev-{i}" for i in range(len(d))]
    )
    known = imported.labels
    half = len(pairs) // 2
    judged, train = pairs.iloc[:half].reset_index(drop=True), pairs.iloc[half:]
    truth = known.set_index("pair_id")["label"]
    rows = pd.DataFrame(
        {
            "prompt": train["prompt"],
            "chosen": [r.response_a if truth[r.pair_id] == "A" else r.response_b for r in train.itertuples()],
            "rejected": [
                r.response_b if truth[r.pair_id] == "A" else r.response_a for r in train.itertuples()
            ],
        }
    )
    constitution = load_constitution(args.constitution)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pm"
        train_reward_model(rows, RewardTrainingConfig(epochs=args.epochs, batch_size=8), out)
        write_model_card(out, {"trained": True, "train_prompt_ids": sorted(train["prompt_id"])})
        train_s = time.perf_counter() - t0
        scorer = RewardScorer(out)
        pm = judge_with_preference_model(
            judged, scorer.score, "pm:bench", constitution.judge, trained_prompt_ids=train["prompt_id"]
        )
    assert pm.n_trained_on == 0  # the halves share no prompt ids
    pm_prefs = pm.pairs
    llm_pairs = judged.iloc[: args.llm_pairs]
    llm, llm_id = judge(llm_pairs, constitution, None, Path(args.cache), 16)
    table = pd.DataFrame(
        [
            {
                "judge": f"embedded LLM ({llm_id.split(':', 1)[-1]})",
                **figures(llm.pairs, known, constitution),
            },
            {
                "judge": "MiniLM preference model",
                "subset": f"first {args.llm_pairs}",
                **figures(pm_prefs[pm_prefs["pair_id"].isin(llm_pairs["pair_id"])], known, constitution),
            },
            {
                "judge": "MiniLM preference model",
                "subset": f"all {half}",
                **figures(pm_prefs, known, constitution),
            },
        ]
    )
    print(
        f"reward model: {len(rows)} training pairs, {args.epochs:g} epoch(s), {train_s:.0f}s; "
        f"judged {half} other pairs ({pm.model_calls} replies scored)"
    )
    print(table.to_string(index=False))

    blend = parse_blend(Path(args.blend).read_bytes(), args.blend)
    df = run_benchmark(
        judged,
        pm_prefs[[c for c in pm_prefs.columns if c not in ("r_a", "r_b")]],
        known,
        blend,
        seeds=args.seeds,
    )
    print(markdown(df))
    Path(args.plot).write_bytes(
        plot(
            df,
            f"{half} HH-RLHF harmless dev pairs, judge: MiniLM preference model trained "
            f"on the other {len(rows)}, replayed human labels",
        )
    )
    print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
