"""Constitutional AI phase 1 on the red-team prompts: how often the revision gate accepts a revision of the
embedded SmolLM2-135M with the embedded LLM judge and with a preference-model judge, the gain per round, and
the SFT policy trained on the accepted revisions against its base, side by side in one run.

    .venv/bin/python benchmarks/revisions.py [--prompts 16] [--tokens 48] [--pm-pairs 576] \
        [--eval-prompts 16] [--sft-steps 10] [--json out.json]

Chains: the starter `constitutional-ai` (5 principles with the paper's critique/revision requests, 3 shared
demonstrations, 2 rounds, min_gain 0.05, helpfulness guards `harmless-helpful` and `not-preachy`), the first
`--prompts` training-split red-team prompts of the packaged pool, greedy, `--tokens` per reply, critique and
revision. The same chains are gated twice: by the constitution's embedded LLM judge (SmolLM2, `pairwise-v1`,
both orders) and by a MiniLM preference model (`judge.preference_model`, LLM judge off) trained on the first
`--pm-pairs` pairs of the HH-RLHF harmless dev file (RewardTrainer, 1 epoch, batch 8). Round 1's calls are
the same for both judges and come from the call cache the second time; later rounds differ where the judges'
decisions do.

SFT: the accepted revisions of each judge (at least 2) train an SFT LoRA (`training.sft`, cpu preset,
`--sft-steps` steps), evaluated against the base on the first `--eval-prompts` eval-split prompts (red-team
and helpful, round-robin), greedy, judged by both judges (both orders; the preference model per reply).

Model calls, judgments and preference-model scores are cached under `--cache`, so a rerun makes none.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alignment_dagster.backends import BackendSpec, Sampling, make_backend
from alignment_dagster.core.storage import LocalStorage
from alignment_dagster.data.pairs import import_pairs
from alignment_dagster.data.prompts import STARTER_SOURCES, build_prompt_pool
from alignment_dagster.data.sampling import generation_cache, sample_responses
from alignment_dagster.evaluation.metrics import (
    eval_prompts,
    length_stats,
    outcome,
    policy_base_pairs,
    refusal_rate,
    wilson_interval,
    win_rate,
)
from alignment_dagster.revision.call_cache import CallCache
from alignment_dagster.revision.chains import ChainSettings, run_chains
from alignment_dagster.revision.judging import RevisionJudge
from alignment_dagster.revision.phase_one import (
    best_revisions,
    final_judgments,
    revision_prompts,
    round_metrics,
)
from alignment_dagster.specs.constitution import load_constitution
from alignment_dagster.training.artifacts import write_model_card
from alignment_dagster.training.presets import sft_config
from alignment_dagster.training.reward import RewardTrainingConfig, train_reward_model
from alignment_dagster.training.sft import fit_sft_policy

DATA = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-dev.jsonl.gz"


def preference_model(folder: Path, n_pairs: int) -> Path:
    """A MiniLM reward model on the first `n_pairs` HH dev pairs (trained once, then reused)."""
    if (folder / "alignment.json").is_file():
        return folder
    imported = import_pairs([str(DATA)], lambda p: Path(p).read_bytes(), limit=n_pairs)
    truth = imported.labels.set_index("pair_id")["label"]
    pairs = imported.pairs
    rows = pd.DataFrame(
        {
            "prompt": pairs["prompt"],
            "chosen": [r.response_a if truth[r.pair_id] == "A" else r.response_b for r in pairs.itertuples()],
            "rejected": [
                r.response_b if truth[r.pair_id] == "A" else r.response_a for r in pairs.itertuples()
            ],
        }
    )
    t0 = time.perf_counter()
    train_reward_model(rows, RewardTrainingConfig(epochs=1.0, batch_size=8), folder)
    write_model_card(folder, {"trained": True, "train_prompt_ids": sorted(pairs["prompt_id"])})
    print(f"preference model: {len(rows)} HH pairs, 1 epoch, {time.perf_counter() - t0:.0f}s", flush=True)
    return folder


def gate_figures(name: str, rounds: pd.DataFrame, seconds: float, calls: int, judge_calls: int) -> dict:
    revised = rounds[rounds["round"] > 0]
    accepted = int(revised["accepted"].sum())
    lo, hi = wilson_interval(accepted, len(revised))
    reasons: dict[str, int] = {}
    for reason in revised["reason"]:
        for r in reason.split(","):
            reasons[r] = reasons.get(r, 0) + 1
    return {
        "judge": name,
        "chains": int((rounds["round"] == 0).sum()),
        "revisions": len(revised),
        "accepted": accepted,
        "accept_rate": accepted / len(revised) if len(revised) else float("nan"),
        "accept_ci": f"[{lo:.2f}, {hi:.2f}]",
        "chains_kept": int(rounds["best"].sum()),
        "no_change_rate": float((revised["reason"] == "no_change").mean()),
        "boilerplate_stripped": float(revised["boilerplate_stripped"].astype(bool).mean()),
        "new_refusals": int(revised["new_refusal"].astype(bool).sum()),
        "mean_length_ratio": float(revised["length_ratio"].astype(float).mean()),
        "reasons": reasons,
        "generation_calls_made": calls,
        "judge_calls": judge_calls,
        "seconds": seconds,
        "seconds_per_accepted": seconds / accepted if accepted else float("nan"),
    }


def run_judge(
    name, constitution, prompts, backend, store, settings
) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    judge = RevisionJudge(constitution, lambda: backend, store)
    t0 = time.perf_counter()
    run = run_chains(prompts, constitution, backend, judge, CallCache(store, backend.identity), settings)
    best = best_revisions(run.rounds)
    final = final_judgments(best, judge)
    seconds = time.perf_counter() - t0
    count = judge.count
    figures = gate_figures(
        name, run.rounds, seconds, run.calls.made, count.prompts_scored + count.replies_scored
    )
    per_round = round_metrics(run.rounds[run.rounds["round"] > 0])[1].assign(judge=name)
    kept = best.merge(final, on="prompt_id", how="left") if len(best) else best
    judge.close()
    return figures, per_round, kept


def sft_evals(kept, judges, backend, store, args, pool, work: Path) -> list[dict]:
    """SFT on the kept revisions, then policy vs base on eval prompts, judged by each judge."""
    rows = pd.DataFrame(
        {
            "prompt_id": kept["prompt_id"],
            "messages": [
                [{"role": "user", "content": p}, {"role": "assistant", "content": r}]
                for p, r in zip(kept["prompt"], kept["revision"], strict=True)
            ],
        }
    )
    t0 = time.perf_counter()
    outcome_ = fit_sft_policy(rows, sft_config("cpu", max_steps=args.sft_steps), None, work, min_train_rows=2)
    train_s = time.perf_counter() - t0
    if not outcome_.trained:
        return [{"sft": "not trained", "reason": outcome_.card["skip_reason"]}]
    policy = make_backend(BackendSpec(adapter=str(outcome_.model_dir)))
    prompts = eval_prompts(pool, args.eval_prompts)
    sampling = Sampling(temperature=0.0, max_new_tokens=args.tokens)
    replies = {}
    for who, b in (("base", backend), ("sft", policy)):
        got, _ = sample_responses(
            prompts, b, sampling, 1, generation_cache(store, b.identity), progress=False
        )
        replies[who] = [got[p][0] for p in prompts["prompt_id"]]
    pairs = policy_base_pairs(prompts, replies["sft"], replies["base"])
    out = []
    for name, constitution in judges:
        judge = RevisionJudge(constitution, lambda: backend, store)
        labels = judge.overall(pairs).set_index("pair_id")["label"]
        judge.close()
        wins = win_rate(outcome(labels.get(p, "abstain"), "A") for p in pairs["pair_id"])
        lo, hi = wins.win_ci
        red = pairs["category"] == "red-team"
        out.append(
            {
                "judge": name,
                "sft_rows": len(rows),
                "sft_steps": args.sft_steps,
                "sft_train_s": round(train_s),
                "eval_prompts": len(pairs),
                "win": wins.win_rate,
                "tie": wins.tie_rate,
                "loss": wins.loss_rate,
                "win_ci": f"[{lo:.2f}, {hi:.2f}]",
                "same_as_base": float((pairs["policy"] == pairs["base"]).mean()),
                "refusal_red_team_sft": refusal_rate(list(pairs.loc[red, "policy"])),
                "refusal_red_team_base": refusal_rate(list(pairs.loc[red, "base"])),
                "length_sft": length_stats(list(pairs["policy"]))["mean"],
                "length_base": length_stats(list(pairs["base"]))["mean"],
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--pm-pairs", type=int, default=576)
    ap.add_argument("--eval-prompts", type=int, default=16)
    ap.add_argument("--sft-steps", type=int, default=10)
    ap.add_argument("--constitution", default=str(REPO / "constitutions" / "constitutional-ai.yaml"))
    ap.add_argument("--cache", default=str(REPO / ".alignment" / "benchmarks" / "revisions"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    cache = Path(args.cache)
    store = LocalStorage(cache / "store")
    pool = build_prompt_pool(list(STARTER_SOURCES), lambda uri: b"").prompts
    prompts = revision_prompts(pool, args.prompts, categories=("red-team",))
    llm_c = load_constitution(args.constitution)
    pm_dir = preference_model(cache / f"pm-{args.pm_pairs}", args.pm_pairs)
    pm_judge = llm_c.judge.model_copy(update={"preference_model": str(pm_dir), "use_llm_judge": False})
    pm_c = llm_c.model_copy(update={"judge": pm_judge})
    judges = [("embedded LLM judge", llm_c), ("MiniLM preference model", pm_c)]
    backend = make_backend(BackendSpec())
    settings = ChainSettings(max_new_tokens=args.tokens)
    results = [run_judge(name, c, prompts, backend, store, settings) for name, c in judges]
    gates = pd.DataFrame([r[0] for r in results])
    per_round = pd.concat([r[1] for r in results], ignore_index=True)
    print("\n## gate\n" + gates.drop(columns=["reasons"]).to_string(index=False))
    print("\n## reasons\n" + "\n".join(f"{g['judge']}: {g['reasons']}" for g in gates.to_dict("records")))
    print("\n## per round\n" + per_round.round(3).to_string(index=False))
    evals = []
    for (name, _), (_, _, kept) in zip(judges, results, strict=True):
        for row in sft_evals(kept, judges, backend, store, args, pool, cache / f"sft-{name.split()[1]}"):
            evals.append({"revisions judged by": name, **row})
    print("\n## SFT policy vs base\n" + pd.DataFrame(evals).to_string(index=False))
    examples = pd.concat([r[2].assign(judge=r[0]["judge"]) for r in results if len(r[2])], ignore_index=True)
    if len(examples):
        for row in examples.head(6).itertuples(index=False):
            print(
                f"\n[{row.judge}] {row.prompt[:100]}\n  original: {row.original[:200]}\n"
                f"  kept:     {row.revision[:200]}"
            )
    print(f"\nwall time {time.perf_counter() - t_start:.0f}s")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"gate": gates.to_dict("records"), "per_round": per_round.to_dict("records"), "sft": evals},
                indent=1,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
