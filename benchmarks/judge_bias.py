"""Judge biases on real human labels: how often humans, the embedded SmolLM2 judge and a MiniLM
preference-model judge prefer the longer reply on the same HH-RLHF pairs, whether length debiasing raises
agreement with the humans on held-out pairs, and the embedded judge's self-preference against a judge of
another family.

    .venv/bin/python benchmarks/judge_bias.py [--llm-pairs 160] [--self-pairs 40] [--json out.json]

The dev file's pairs are split by position as in `benchmarks/preference_judge.py`: the second half trains the
MiniLM reward model (RewardTrainer, 1 epoch), the first half is judged. Lengths are counted in SmolLM2
tokens (the embedded judge's tokenizer) for every judge alike; pairs within 10% or 3 tokens are near-equal,
left out and counted (`judge.length_bias` defaults). Each judge's forced lean (the side of its p_a) is tested
against the human label of the same pair with the `length_bias` check's paired test.

Self-preference: on the first `--self-pairs` judged conversations the embedded SmolLM2 (the policy's base)
writes its own greedy reply, paired against the HH reply the humans preferred. This judge (SmolLM2, the
same model) and the MiniLM preference model (another family, trained on human labels) each say which
reply is better; the excess is how much more often SmolLM2 prefers its own reply.

The LLM judge's judgments are cached under `--cache` (the same cache as `benchmarks/routing.py`), so a rerun
makes no judge calls.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alignment_dagster.backends import BackendSpec, Sampling, make_backend  # noqa: E402
from alignment_dagster.core.storage import LocalStorage  # noqa: E402
from alignment_dagster.data.pairs import import_pairs  # noqa: E402
from alignment_dagster.evaluation.metrics import wilson_interval  # noqa: E402
from alignment_dagster.judge.bias import (  # noqa: E402
    judge_relation,
    length_bias,
    length_debias,
    longer_reply,
    reply_lengths,
    self_preference,
)
from alignment_dagster.judge.cache import JudgmentCache  # noqa: E402
from alignment_dagster.judge.gate import gate_comparisons  # noqa: E402
from alignment_dagster.judge.preference_model import bradley_terry, judge_with_preference_model  # noqa: E402
from alignment_dagster.judge.runner import judge_pairs  # noqa: E402
from alignment_dagster.judge.templates import get_template  # noqa: E402
from alignment_dagster.specs.constitution import LengthBiasSettings, load_constitution  # noqa: E402
from alignment_dagster.training.reward import RewardScorer, RewardTrainingConfig, train_reward_model  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-dev.jsonl.gz"
SETTINGS = LengthBiasSettings()


def human_longer(known: pd.DataFrame, lengths: pd.DataFrame) -> dict:
    """How often the human label is the longer reply (near-equal pairs left out and counted)."""
    merged = known.merge(lengths, on="pair_id")
    longer = [
        longer_reply(a, b, SETTINGS.near_equal_fraction, SETTINGS.near_equal_tokens)
        for a, b in zip(merged["len_a"], merged["len_b"], strict=True)
    ]
    counted = [(lab == side) for lab, side in zip(merged["label"], longer, strict=True) if side is not None]
    k, n = sum(counted), len(counted)
    lo, hi = wilson_interval(k, n)
    return {"pairs": len(merged), "near_equal": len(merged) - n, "n": n, "longer_rate": k / n, "ci": [lo, hi]}


def bias_row(name: str, prefs: pd.DataFrame, known: pd.DataFrame, lengths: pd.DataFrame, unit: str) -> dict:
    """The length_bias check's figures and the debiasing result for one judge's p_a on its pairs."""
    report = length_bias(gate_comparisons(prefs, pd.DataFrame(), [], known), lengths, SETTINGS, unit)
    t = report.test
    merged = prefs[["pair_id", "p_a"]].merge(known, on="pair_id").merge(lengths, on="pair_id")
    merged = merged[merged["label"].isin(["A", "B"])]
    debias = length_debias(merged["p_a"], merged["len_a"], merged["len_b"], list(merged["label"]))
    return {
        "judge": name,
        "pairs": len(prefs),
        "n": t.n,
        "left_out": report.left_out,
        "judge_longer_rate": t.judge_rate,
        "human_longer_rate": t.reference_rate,
        "excess": t.excess,
        "judge_only": t.judge_only,
        "human_only": t.reference_only,
        "p_value": t.p_value,
        "verdict": report.verdict,
        "debias": {
            "kept": debias.kept,
            "agreement_before": debias.agreement_before,
            "agreement_after": debias.agreement_after,
            "gained": debias.gained,
            "lost": debias.lost,
            "p_value": debias.p_value,
            "length_weight": debias.length_weight,
            "reason": debias.reason,
        },
    }


def train_pm(train: pd.DataFrame, truth: pd.Series, epochs: float, out: Path) -> RewardScorer:
    rows = pd.DataFrame(
        {
            "prompt": train["prompt"],
            "chosen": [r.response_a if truth[r.pair_id] == "A" else r.response_b for r in train.itertuples()],
            "rejected": [
                r.response_b if truth[r.pair_id] == "A" else r.response_a for r in train.itertuples()
            ],
        }
    )
    train_reward_model(rows, RewardTrainingConfig(epochs=epochs, batch_size=8), out)
    return RewardScorer(out)


def llm_judge(pairs: pd.DataFrame, constitution, backend, cache_dir: Path):
    template = get_template(constitution.judge.template)
    cache = JudgmentCache(LocalStorage(cache_dir), backend.identity, template.version)
    return judge_pairs(pairs, constitution, backend, template, cache, shard_size=64)


def self_preference_row(
    judged: pd.DataFrame, truth: pd.Series, n: int, constitution, backend, scorer, cache_dir: Path
) -> dict:
    """SmolLM2's own greedy reply against the humans' preferred HH reply, judged by SmolLM2 and MiniLM."""
    conv = judged.iloc[:n]
    hh = [r.response_a if truth[r.pair_id] == "A" else r.response_b for r in conv.itertuples()]
    t0 = time.perf_counter()
    own = [
        replies[0]
        for replies in backend.generate(
            [[{"role": "user", "content": p}] for p in conv["prompt"]],
            sampling=Sampling(temperature=0.0, max_new_tokens=64),
        )
    ]
    generation_s = time.perf_counter() - t0
    pairs = pd.DataFrame(
        {
            "pair_id": [f"self-{i}" for i in range(len(conv))],
            "prompt": list(conv["prompt"]),
            "response_a": own,
            "response_b": hh,
            "category": "red-team",
        }
    )
    this = llm_judge(pairs, constitution, backend, cache_dir).pairs.set_index("pair_id").loc[pairs["pair_id"]]
    r_own, r_hh = scorer.score(list(pairs["prompt"]), own), scorer.score(list(pairs["prompt"]), hh)
    ref = [bradley_terry(a, b) for a, b in zip(r_own, r_hh, strict=True)]
    relation = judge_relation(backend.identity, backend.identity)
    sp = self_preference(relation, list(this["p_a"]), ref, reference="MiniLM preference model")
    t = sp.test
    return {
        "relation": relation,
        "n": t.n,
        "left_out": sp.left_out,
        "judge_own_rate": t.judge_rate,
        "reference_own_rate": t.reference_rate,
        "excess": t.excess,
        "p_value": t.p_value,
        "generation_s": generation_s,
        "mean_own_tokens": sum(backend.count_tokens(own)) / len(own),
        "mean_hh_tokens": sum(backend.count_tokens(hh)) / len(hh),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--llm-pairs", type=int, default=160)
    ap.add_argument("--self-pairs", type=int, default=40)
    ap.add_argument("--constitution", default=str(REPO / "constitutions" / "constitutional-ai.yaml"))
    ap.add_argument("--cache", default=str(REPO / ".alignment" / "benchmarks" / "routing"))
    ap.add_argument("--json", help="also write every figure to this JSON file")
    args = ap.parse_args(argv)

    imported = import_pairs([args.data], lambda p: Path(p).read_bytes())
    pairs = imported.pairs.reset_index(drop=True).assign(
        prompt_id=lambda d: [f"dev-{i}" for i in range(len(d))]
    )
    known = imported.labels
    truth = known.set_index("pair_id")["label"]
    half = len(pairs) // 2
    judged, train = pairs.iloc[:half].reset_index(drop=True), pairs.iloc[half:]
    constitution = load_constitution(args.constitution)
    backend = make_backend(BackendSpec(batch_size=16, cpu_threads=1))
    lengths, _ = reply_lengths(pairs, backend.count_tokens)
    unit = "SmolLM2 tokens"
    out: dict = {"data": args.data, "pairs": len(pairs), "unit": unit}
    out["humans_all"] = human_longer(known, lengths)
    out["humans_judged_half"] = human_longer(known[known["pair_id"].isin(judged["pair_id"])], lengths)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        scorer = train_pm(train, truth, args.epochs, Path(tmp) / "pm")
        out["pm_train_s"] = time.perf_counter() - t0
        pm = judge_with_preference_model(
            judged, scorer.score, "pm:bench", constitution.judge, trained_prompt_ids=train["prompt_id"]
        )
        assert pm.n_trained_on == 0  # the halves share no prompt ids: every judged pair is held out
        out["pm"] = bias_row(
            f"MiniLM preference model (all {half} held-out pairs)", pm.pairs, known, lengths, unit
        )
        llm_pairs = judged.iloc[: args.llm_pairs]
        t0 = time.perf_counter()
        llm = llm_judge(llm_pairs, constitution, backend, Path(args.cache))
        out["llm_s"], out["llm_calls"] = time.perf_counter() - t0, llm.stats.model_calls
        out["llm"] = bias_row(f"embedded SmolLM2 (first {len(llm_pairs)})", llm.pairs, known, lengths, unit)
        pm_same = pm.pairs[pm.pairs["pair_id"].isin(llm_pairs["pair_id"])]
        out["pm_same"] = bias_row(
            f"MiniLM preference model (same {len(llm_pairs)})", pm_same, known, lengths, unit
        )
        if args.self_pairs:
            out["self_preference"] = self_preference_row(
                judged, truth, args.self_pairs, constitution, backend, scorer, Path(args.cache)
            )
    print(json.dumps(out, indent=2, default=float))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
