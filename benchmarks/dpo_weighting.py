"""Weighted vs unweighted DPO on the same AI-labelled pairs, measured side by side in one run.

Does weighting each pair's DPO loss by the labeller's confidence help? Only if confidence tracks
correctness, so the labels here come from a real, imperfect AI labeller whose confidence is not made up:
a MiniLM reward model trained on one slice of the HH-RLHF harmless dev file labels a second, disjoint
slice (label = the reply it scores higher, confidence = |2 sigmoid(r_a - r_b) - 1|, as the judge's
confidence is defined). The pipeline's own judge (SmolLM2) abstains on every pair (benchmarks/README.md),
so its confidences cannot be used.

Both policies train on exactly the same rows, base model, seed, order and steps; only the loss weights
differ (weighted: confidence normalised to mean 1; unweighted: all 1). Both are scored on a third,
held-out slice against the *human* labels: implicit-reward accuracy (sign of the DPO reward margin vs the
base model), with the paired disagreement counts and an exact McNemar p-value.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dpo_weighting.py \
        --train-pairs 48 --eval-pairs 100 --steps 24
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alignment_dagster.core.keys import sha256_hex
from alignment_dagster.data.pairs import import_pairs
from alignment_dagster.training.dpo import DPOTrainingConfig, train_dpo
from alignment_dagster.training.policy_eval import reply_logprobs
from alignment_dagster.training.reward import RewardScorer, RewardTrainingConfig, train_reward_model

DATA = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-dev.jsonl.gz"


def slice_of(prompt_id: str) -> str:
    """Disjoint slices by prompt (never by pair), drawn by hash: judge 50%, dpo 25%, eval 25%."""
    u = int(sha256_hex("dpo-weighting:" + prompt_id)[:8], 16) / 16**8
    return "judge" if u < 0.5 else ("dpo" if u < 0.75 else "eval")


def rows(pairs: pd.DataFrame, label_col: str) -> pd.DataFrame:
    """Conversational chosen/rejected rows by the A/B label in `label_col`."""
    a_wins = pairs[label_col] == "A"
    return pd.DataFrame(
        {
            "pair_id": pairs["pair_id"].values,
            "prompt_id": pairs["prompt_id"].values,
            "prompt": [[{"role": "user", "content": p}] for p in pairs["prompt"]],
            "chosen": [
                [{"role": "assistant", "content": a if w else b}]
                for a, b, w in zip(pairs["response_a"], pairs["response_b"], a_wins, strict=False)
            ],
            "rejected": [
                [{"role": "assistant", "content": b if w else a}]
                for a, b, w in zip(pairs["response_a"], pairs["response_b"], a_wins, strict=False)
            ],
        }
    )


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar test on the discordant counts."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(0, min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--judge-pairs", type=int, default=400, help="pairs to train the reward-model labeller on"
    )
    ap.add_argument("--judge-steps", type=int, default=50)
    ap.add_argument("--train-pairs", type=int, default=48, help="AI-labelled pairs both policies train on")
    ap.add_argument("--eval-pairs", type=int, default=100, help="held-out human-labelled pairs")
    ap.add_argument("--steps", type=int, default=24, help="DPO steps (same for both)")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--learning-rate", type=float, default=2e-4)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args()

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignment_dagster.backends.embedded import embedded_model_path

    t_start = time.perf_counter()
    ps = import_pairs([str(DATA)], lambda u: Path(u).read_bytes())
    pairs = ps.pairs.merge(ps.labels[["pair_id", "label"]], on="pair_id")
    pairs["slice"] = pairs["prompt_id"].map(slice_of)
    judge_pairs = pairs[pairs["slice"] == "judge"].head(args.judge_pairs)
    dpo_pairs = pairs[pairs["slice"] == "dpo"].head(args.train_pairs).copy()
    eval_pairs = pairs[pairs["slice"] == "eval"].head(args.eval_pairs)
    work = Path(tempfile.mkdtemp(prefix="dpo-weighting-"))

    # 1. The AI labeller: a reward model on the judge slice's human labels.
    rm_cfg = RewardTrainingConfig(max_steps=args.judge_steps, max_length=128, seed=args.seed)
    train_reward_model(rows(judge_pairs, "label"), rm_cfg, work / "judge")
    scorer = RewardScorer(work / "judge")
    conv = [[{"role": "user", "content": p}] for p in dpo_pairs["prompt"]]
    r_a = scorer.score(conv, list(dpo_pairs["response_a"]))
    r_b = scorer.score(conv, list(dpo_pairs["response_b"]))
    dpo_pairs["ai_label"] = ["A" if a > b else "B" for a, b in zip(r_a, r_b, strict=False)]
    dpo_pairs["confidence"] = [abs(2 / (1 + math.exp(-(a - b))) - 1) for a, b in zip(r_a, r_b, strict=False)]
    correct = dpo_pairs["ai_label"] == dpo_pairs["label"]
    train = rows(dpo_pairs, "ai_label")
    train["weight"] = dpo_pairs["confidence"].values
    labeller = {
        "agreement_with_humans": float(correct.mean()),
        "mean_confidence_when_right": float(dpo_pairs.loc[correct, "confidence"].mean()),
        "mean_confidence_when_wrong": float(dpo_pairs.loc[~correct, "confidence"].mean()),
    }
    print(f"labeller: {json.dumps(labeller)}", flush=True)

    # 2. Both policies, same everything but the weights.
    base_path = str(embedded_model_path())
    base_cfg = DPOTrainingConfig(
        max_steps=args.steps,
        batch_size=args.batch_size,
        max_length=args.max_length,
        learning_rate=args.learning_rate,
        beta=args.beta,
        seed=args.seed,
        save_steps=10**6,
        logging_steps=max(1, args.steps // 6),
    )
    policies = {}
    seconds = {}
    for name, weighted in (("weighted", True), ("unweighted", False)):
        t0 = time.perf_counter()
        policies[name] = train_dpo(
            train, base_path, replace(base_cfg, weighted=weighted), work / name
        ).output_dir
        seconds[name] = time.perf_counter() - t0

    # 3. Held-out human labels: implicit reward margin vs the base (reference computed once).
    tok = AutoTokenizer.from_pretrained(base_path)
    held = rows(eval_pairs, "label")
    prompts, chosen, rejected = list(held["prompt"]), list(held["chosen"]), list(held["rejected"])
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32).eval()
    ref_c = reply_logprobs(base, tok, prompts, chosen, args.max_length)
    ref_r = reply_logprobs(base, tok, prompts, rejected, args.max_length)
    right = {}
    results = {}
    for name, folder in policies.items():
        model = (
            PeftModel.from_pretrained(
                AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32), str(folder)
            )
            .merge_and_unload()
            .eval()
        )
        pol_c = reply_logprobs(model, tok, prompts, chosen, args.max_length)
        pol_r = reply_logprobs(model, tok, prompts, rejected, args.max_length)
        margin = [
            args.beta * ((pc - rc) - (pr - rr))
            for pc, rc, pr, rr in zip(pol_c, ref_c, pol_r, ref_r, strict=False)
        ]
        right[name] = [m > 0 for m in margin]
        results[name] = {
            "heldout_accuracy": sum(right[name]) / len(margin),
            "mean_reward_margin": sum(margin) / len(margin),
            "train_seconds": seconds[name],
        }
    only_w = sum(w and not u for w, u in zip(right["weighted"], right["unweighted"], strict=False))
    only_u = sum(u and not w for w, u in zip(right["weighted"], right["unweighted"], strict=False))
    out = {
        "setup": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "n_train": len(train),
            "n_eval": len(held),
            "base": "SmolLM2-135M-Instruct (LoRA r=16)",
            "truncation_mode": base_cfg.truncation_mode,
            # Two runs once differed with no recorded cause: versions tell a library change apart.
            "versions": {m: version(m) for m in ("torch", "transformers", "trl", "peft")},
        },
        "labeller": labeller,
        "policies": results,
        "accuracy_difference_weighted_minus_unweighted": results["weighted"]["heldout_accuracy"]
        - results["unweighted"]["heldout_accuracy"],
        "discordant": {
            "only_weighted_right": only_w,
            "only_unweighted_right": only_u,
            "mcnemar_p": mcnemar_p(only_w, only_u),
        },
        "total_seconds": time.perf_counter() - t_start,
    }
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
