"""Routing efficiency: how good are the blended labels for a human budget, uncertainty vs random routing.

    .venv/bin/python benchmarks/routing.py [--pairs 80] [--seeds 20] [--plot benchmarks/routing.png]

The first `--pairs` pairs of the shared HH-RLHF harmless dev file are judged by the real judge (the
embedded SmolLM2-135M-Instruct unless --model is given) under the starter `constitutional-ai` constitution,
both orders, with a disk cache (`--cache`), so a rerun makes no model calls. For each human budget (0, 10,
.., 50% of the pairs) the budget is spent two ways:

* uncertainty: `routing.route_edge_cases` (abstentions first, then lowest confidence; no audit slice);
* random: a uniform random subset of the same size, averaged over `--seeds` draws (min and max reported).

The routed pairs are answered by the replay labeller (the dataset's own human labels), and the labels are
scored against those same human labels two ways:

* blend: `blend_preferences` under the starter `hybrid` blend (confident AI labels + human labels, humans
  win conflicts). coverage = rows / pairs, accuracy = correct rows / rows;
* forced: every pair gets a label: the human one if routed, else the side of the judge's debiased p_a
  (p_a = 0.5 counts as half right). This is the label quality a pipeline would have if it labelled every
  pair, so it shows what routing buys even when the judge abstains everywhere.

Prints a markdown table and writes a PNG plot.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alignment_dagster.data.blending import blend_preferences
from alignment_dagster.data.pairs import import_pairs
from alignment_dagster.human.agreement import aggregate_labels
from alignment_dagster.human.replay import ReplayLabeller
from alignment_dagster.human.routing import route_edge_cases
from alignment_dagster.judge.gate import gate_comparisons, judge_gate
from alignment_dagster.specs.blend import Blend, parse_blend
from alignment_dagster.specs.constitution import Constitution, RoutingSettings, load_constitution

BUDGETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
DATA = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-dev.jsonl.gz"


def uncertainty_routed(prefs: pd.DataFrame, pairs: pd.DataFrame, budget: int) -> list[str]:
    cases = route_edge_cases(prefs, pairs, RoutingSettings(human_budget=budget, audit_fraction=0.0))
    return list(cases.loc[cases["send"], "pair_id"])


def random_routed(pair_ids: list[str], budget: int, seed: int) -> list[str]:
    return random.Random(seed).sample(sorted(pair_ids), budget)


def score(
    pairs: pd.DataFrame, prefs: pd.DataFrame, known: pd.DataFrame, routed: list[str], blend: Blend
) -> dict:
    """Blend and forced accuracy of the labels when the `routed` pairs get a human (replayed) label."""
    truth = known.set_index("pair_id")["label"]
    human = ReplayLabeller(known).label(pd.DataFrame({"pair_id": routed})).labels
    agg = aggregate_labels(human) if len(human) else pd.DataFrame(columns=["pair_id", "choice"])
    ds = blend_preferences(pairs, prefs, agg, blend).dataset
    chosen_is_a = [
        c[0]["content"] == a
        for c, a in zip(
            ds["chosen"], pairs.set_index("pair_id").loc[ds["pair_id"], "response_a"], strict=True
        )
    ]
    blend_labels = pd.Series(["A" if x else "B" for x in chosen_is_a], index=ds["pair_id"], dtype=object)
    blend_correct = int((blend_labels == truth.loc[blend_labels.index]).sum()) if len(ds) else 0

    routed_set = set(routed)
    forced = 0.0
    for r in prefs.itertuples(index=False):
        if r.pair_id in routed_set:
            forced += 1.0  # replayed human label = the reference label
        elif r.p_a == 0.5:
            forced += 0.5
        else:
            forced += float(("A" if r.p_a > 0.5 else "B") == truth[r.pair_id])
    n = len(prefs)
    return {
        "coverage": len(ds) / n,
        "blend_accuracy": blend_correct / len(ds) if len(ds) else float("nan"),
        "ai_rows": int((ds["source"] == "ai").sum()) if len(ds) else 0,
        "forced_accuracy": forced / n,
    }


def run_benchmark(
    pairs: pd.DataFrame,
    prefs: pd.DataFrame,
    known: pd.DataFrame,
    blend: Blend,
    budgets=BUDGETS,
    seeds: int = 20,
) -> pd.DataFrame:
    rows = []
    n = len(pairs)
    for frac in budgets:
        budget = round(frac * n)
        u = score(pairs, prefs, known, uncertainty_routed(prefs, pairs, budget), blend)
        rows.append(
            {
                "budget": frac,
                "n_human": budget,
                "routing": "uncertainty",
                **u,
                "forced_min": u["forced_accuracy"],
                "forced_max": u["forced_accuracy"],
            }
        )
        draws = [
            score(pairs, prefs, known, random_routed(list(pairs["pair_id"]), budget, s), blend)
            for s in range(seeds)
        ]
        d = pd.DataFrame(draws)
        rows.append(
            {
                "budget": frac,
                "n_human": budget,
                "routing": f"random (mean of {seeds})",
                "coverage": d["coverage"].mean(),
                "blend_accuracy": d["blend_accuracy"].mean(),
                "ai_rows": d["ai_rows"].mean(),
                "forced_accuracy": d["forced_accuracy"].mean(),
                "forced_min": d["forced_accuracy"].min(),
                "forced_max": d["forced_accuracy"].max(),
            }
        )
    return pd.DataFrame(rows)


def markdown(df: pd.DataFrame) -> str:
    lines = [
        "| human budget | routing | blend coverage | blend accuracy | AI rows | forced accuracy (min-max) |",
        "|---|---|---|---|---|---|",
    ]
    for r in df.itertuples(index=False):
        spread = f" ({r.forced_min:.3f}-{r.forced_max:.3f})" if r.forced_min != r.forced_max else ""
        acc = "n/a" if r.blend_accuracy != r.blend_accuracy else f"{r.blend_accuracy:.3f}"
        lines.append(
            f"| {r.budget:.0%} ({r.n_human}) | {r.routing} | {r.coverage:.3f} | {acc} | {r.ai_rows:g} | "
            f"{r.forced_accuracy:.3f}{spread} |"
        )
    return "\n".join(lines)


def plot(df: pd.DataFrame, title: str) -> bytes:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    for routing, g in df.groupby("routing", sort=False):
        x = g["budget"] * 100
        line = ax1.plot(x, g["forced_accuracy"], "o-", label=routing)[0]
        if (g["forced_min"] != g["forced_max"]).any():
            ax1.fill_between(x, g["forced_min"], g["forced_max"], color=line.get_color(), alpha=0.2)
        ax2.plot(x, g["coverage"], "o-", label=routing)
    ax1.plot([0, 50], [0.5, 0.75], ":", color="grey", label="no-signal judge (0.5 + budget/2)")
    ax1.set(
        xlabel="human budget (% of pairs)",
        ylabel="accuracy vs human labels",
        title="forced: every pair labelled",
    )
    ax2.set(xlabel="human budget (% of pairs)", ylabel="rows / pairs", title="hybrid blend: coverage")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def judge(
    pairs: pd.DataFrame, constitution: Constitution, model: str | None, cache_dir: Path, batch_size: int
):
    from alignment_dagster.backends import BackendSpec, make_backend
    from alignment_dagster.core.storage import LocalStorage
    from alignment_dagster.judge.cache import JudgmentCache
    from alignment_dagster.judge.runner import judge_pairs
    from alignment_dagster.judge.templates import get_template

    backend = make_backend(BackendSpec(model=model, batch_size=batch_size, cpu_threads=1))
    template = get_template(constitution.judge.template)
    cache = JudgmentCache(LocalStorage(cache_dir), backend.identity, template.version)
    return judge_pairs(pairs, constitution, backend, template, cache, shard_size=64), backend.identity


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--pairs", type=int, default=80)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--model", help="judge model path (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--constitution", default=str(REPO / "constitutions" / "constitutional-ai.yaml"))
    ap.add_argument("--blend", default=str(REPO / "blends" / "hybrid.yaml"))
    ap.add_argument(
        "--cache", default=str(REPO / ".alignment" / "benchmarks" / "routing"), help="judgment cache folder"
    )
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--plot", default=str(REPO / "benchmarks" / "routing.png"))
    args = ap.parse_args(argv)

    imported = import_pairs([args.data], lambda p: Path(p).read_bytes(), limit=args.pairs)
    pairs, known = imported.pairs, imported.labels
    constitution = load_constitution(args.constitution)
    blend = parse_blend(Path(args.blend).read_bytes(), args.blend)
    t0 = time.perf_counter()
    result, judge_id = judge(pairs, constitution, args.model, Path(args.cache), args.batch_size)
    prefs = result.pairs
    seconds = time.perf_counter() - t0
    labels = prefs["label"].value_counts().to_dict()
    reasons = prefs["abstain_reason"].dropna().value_counts().to_dict()
    print(
        f"judge {judge_id}: {len(pairs)} pairs, {result.stats.model_calls} model calls, "
        f"{result.stats.cache_hits} cache hits, {seconds:.0f}s; labels {labels}; abstentions {reasons}; "
        f"mean confidence {prefs['confidence'].mean():.4f}; "
        f"human labels {known['label'].value_counts().to_dict()}"
    )
    gate = judge_gate(
        gate_comparisons(prefs, pd.DataFrame(), [], known),
        alpha=constitution.judge.gate.alpha,
        min_n=constitution.judge.gate.min_n,
    )
    print(
        f"judge signal gate on the {len(known)} known labels: {gate.verdict}; {gate.reason}; "
        f"kappa {gate.kappa}"
    )
    df = run_benchmark(pairs, prefs, known, blend, seeds=args.seeds)
    print(markdown(df))
    png = plot(
        df,
        f"{len(pairs)} HH-RLHF harmless dev pairs, judge {judge_id.split(':', 1)[-1]} "
        f"({Path(args.constitution).stem}), replayed human labels",
    )
    Path(args.plot).write_bytes(png)
    print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
