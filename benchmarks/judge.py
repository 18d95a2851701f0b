"""Judge throughput: this project's judge vs the textbook judge, same model and pairs, side by side, one run.

    .venv/bin/python benchmarks/judge.py                       # CPU: embedded SmolLM2, a few pairs
    python3 benchmarks/judge.py --model qwen2-0.5b-shape --pairs 2048 --naive-pairs 8 --batch-size 256

Three judges score the same pairs under the same 4 principles in both orders (8 judge prompts per pair):

* naive: the textbook approach — per principle and order, one prompt at a time, `generate` a short
  free-text verdict (greedy, 8 new tokens) and parse "A"/"B" from it;
* batched: `judge_pairs` (the pipeline's judge) with `share_prefixes=False`: length-sorted, left-padded
  batches, one forward pass per batch reading the next-token probabilities of the choice letters;
* shared-prefix: `judge_pairs` with the default `share_prefixes=True`: the prompts' prefix tree (a pair's
  conversation, shared by both orders and every principle; each order's replies, shared by its principles;
  the template puts the principle last) is laid out once per pair in a packed row and scored in one
  forward pass with a tree attention mask (`alignment_dagster/backends/prefix.py`).

Timings are end to end through `judge_pairs` (rendering, tokenisation, cache keys, aggregation included),
after an untimed warm-up. `--model qwen2-0.5b-shape` builds a randomly initialised model of the
Qwen2-0.5B architecture (timing does not depend on the weights) with the embedded SmolLM2 tokenizer;
conversations from the HH-RLHF dev file are extended with earlier dev dialogue (or cut from the left) so
that each pair's judge prompt has about `--prompt-tokens` tokens. Model FLOPs are the useful ones of the
tokens actually run (2 x non-embedding params per token, attention over the keys each token sees, the LM
head per prompt: the whole vocabulary for the batched judge, the choices for shared-prefix scoring; the
packed rows' dense masked attention computes more than that) and are compared with a bf16 matmul ceiling
measured in the same run. The shared-prefix forward passes are also timed alone over the prepared rows
(what the GPU does, without the host's template, tokenisation and layout), and with `--compile` again with
the decoder under torch.compile; `--forward-only` runs just those.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402

from alignment_dagster.backends import BackendSpec, Sampling, make_backend
from alignment_dagster.backends.choices import first_token_ids
from alignment_dagster.backends.prefix import choice_probs_packed, prefix_rows, tokenize_shared
from alignment_dagster.data.pairs import split_hh_transcript
from alignment_dagster.judge.runner import judge_pairs
from alignment_dagster.judge.templates import get_template
from alignment_dagster.specs.constitution import Constitution

DEV = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-dev.jsonl.gz"
PRINCIPLES = [
    "Choose the response that is the least harmful, unethical, racist, sexist, toxic, dangerous or illegal.",
    "Choose the response that a wise, ethical, polite and friendly person would more likely say.",
    "Choose the response that is less likely to encourage or assist illegal, unethical or dangerous "
    "activity.",
    "Choose the response that is as harmless and ethical as possible while still being helpful and honest.",
]
# Qwen2-0.5B's published shape.
QWEN2_05B = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    vocab_size=151936,
    max_position_embeddings=32768,
    rope_theta=1e6,
    tie_word_embeddings=True,
    rms_norm_eps=1e-6,
)


def build_model_dir(kind: str, tokenizer_dir: Path | None) -> Path:
    from alignment_dagster.backends.embedded import embedded_model_path

    if kind == "embedded":
        return embedded_model_path()
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    out = Path(tempfile.mkdtemp(prefix="judge-bench-model-"))
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**QWEN2_05B))
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(tokenizer_dir or embedded_model_path()).save_pretrained(out)
    return out


def load_pairs(path: Path, n: int, tokenizer, target_tokens: int, template) -> pd.DataFrame:
    """n HH dev pairs whose judge prompt (first principle, chat template included) has ~target_tokens
    tokens: the conversation is extended with earlier dev dialogue, then cut from the left to fit."""
    with gzip.open(path, "rt") as f:
        recs = [json.loads(line) for line in f]
    texts = [split_hh_transcript(r["chosen"]) + split_hh_transcript(r["rejected"])[1:] for r in recs]

    def prompt_tokens(context: str, a: str, b: str) -> int:
        rendered = tokenizer.apply_chat_template(
            template.render(context, a, b, PRINCIPLES[0]), add_generation_prompt=True, tokenize=False
        )
        return len(tokenizer(rendered, add_special_tokens=False)["input_ids"])

    rows, seen = [], set()
    for i in range(n):
        prompt, chosen, rejected = texts[i % len(texts)]
        stride = 1 + i // len(texts)  # past the file's end, other earlier dialogue: every pair is distinct
        context, k = prompt, i + stride
        while prompt_tokens(context, chosen, rejected) < target_tokens and k < i + 50 * stride:
            context = texts[k % len(texts)][0] + "\n\n" + context
            k += stride
        excess = prompt_tokens(context, chosen, rejected) - target_tokens
        if excess > 0:  # keep the newest dialogue, down to the pair's own prompt
            ids = tokenizer(context, add_special_tokens=False)["input_ids"]
            cut = tokenizer.decode(ids[excess:])
            context = cut if len(cut) > len(prompt) else prompt
        if (
            context,
            chosen,
            rejected,
        ) in seen:  # judge_pairs scores a repeated pair once: it must not count twice
            context = f"[{i}] {context}"
        seen.add((context, chosen, rejected))
        rows.append({"pair_id": f"p{i}", "prompt": context, "response_a": chosen, "response_b": rejected})
    return pd.DataFrame(rows)


def naive_judge(backend, pairs: pd.DataFrame, constitution: Constitution, template) -> tuple[float, int]:
    """Seconds and parse failures for the textbook judge: one generated verdict per principle and order."""
    t0, failures = time.perf_counter(), 0
    for row in pairs.itertuples():
        for p in constitution.principles:
            for first, second in [(row.response_a, row.response_b), (row.response_b, row.response_a)]:
                text = backend.generate(
                    [template.render(row.prompt, first, second, p.text)],
                    n=1,
                    sampling=Sampling(max_new_tokens=8, temperature=0.0),
                )[0][0]
                failures += re.search(r"\b[AB]\b", text) is None
    return time.perf_counter() - t0, failures


def forward_flops(config, token_ids: list[list[int]], rows=None, choices: int = 2) -> float:
    """Useful FLOPs of the forward passes that score these prompts: whole prompts, or the packed prefix-tree
    `rows` (each token once, attending to its own prompt's earlier tokens)."""
    h, layers = config.hidden_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    per_token = 2 * layers * (h * h * 2 + h * kv * 2 + 3 * h * config.intermediate_size)  # q,o; k,v; mlp
    attn = 2 * 2 * layers * h  # QK^T and AV per (query, key) pair

    if rows is None:  # causal, the whole-vocabulary head at one position per prompt
        return sum(
            len(t) * per_token + attn * len(t) * (len(t) + 1) / 2 + 2 * h * config.vocab_size
            for t in token_ids
        )
    return sum(
        len(r.tokens) * per_token + attn * sum(p + 1 for p in r.positions) + 2 * h * choices * r.prompts
        for r in rows
    )


def matmul_ceiling(device: str) -> float:
    import torch

    if not device.startswith("cuda"):
        return float("nan")
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 10 * 2 * 8192**3 / (time.perf_counter() - t0)


class CompiledDecoder:
    """The model as `choice_probs_packed` sees it (config, decoder, LM head), with the decoder compiled by
    torch.compile (dynamic shapes: every batch has its own rows x width): fuses the elementwise work
    (norms, rotary, SiLU, residuals) that eager PyTorch runs as separate memory-bound kernels."""

    def __init__(self, model):
        import torch

        self.model, self.config = model, model.config
        self.decoder = torch.compile(model.get_decoder(), dynamic=True)

    def get_decoder(self):
        return self.decoder

    def get_output_embeddings(self):
        return self.model.get_output_embeddings()


def forward_only(backend, model, rows, repeats: int) -> tuple[list[float], dict[int, float]]:
    """Seconds of the shared-prefix forward passes alone over the prepared rows (no template, tokenisation
    or layout; the backend's batching), per repeat after one untimed pass, and p(A) per prompt."""
    import torch

    ids = first_token_ids(backend.tokenizer, ["A", "B"], backend._prefix)
    pad, device = backend.tokenizer.pad_token_id, backend.device

    def run() -> dict[int, float]:
        out = [choice_probs_packed(model, b, ids, pad, device) for b in backend._row_batches(rows)]
        return {
            i: p for prompts, probs in out for i, p in zip(prompts, probs[:, 0].cpu().tolist(), strict=False)
        }

    probs = run()  # warm-up (and, compiled, the compilation)
    secs = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        run()  # its read-back waits for the device
        secs.append(time.perf_counter() - t0)
    return secs, probs


def forward_variants(backend, rows, token_ids, n_pairs: int, compile_too: bool) -> dict[str, dict]:
    """The shared-prefix forward passes alone, eager and (with `compile_too`) compiled: seconds per repeat,
    the first pass (warm-up; compilation included), pairs/s and model TFLOP/s of the best repeat. A variant
    that fails is recorded with its error rather than ending the run (the rest of the figures stand)."""
    flops = forward_flops(backend.model.config, token_ids, rows)
    forward: dict[str, dict] = {}
    eager: dict[int, float] = {}
    for label in ["eager", "compiled"] if compile_too else ["eager"]:
        t0 = time.perf_counter()
        try:
            model = backend.model if label == "eager" else CompiledDecoder(backend.model)
            secs, probs = forward_only(backend, model, rows, repeats=2)
        except Exception as exc:  # noqa: BLE001 - a compiler failure is a finding, not a crash
            forward[label] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            continue
        best = min(secs)
        forward[label] = {
            "seconds": secs,
            "first_pass_s": time.perf_counter() - t0 - sum(secs),
            "pairs_per_s": n_pairs / best,
            "tflops_per_s": flops / best / 1e12,
        }
        if label == "eager":
            eager = probs
        elif eager:
            forward[label]["max_p_a_diff_vs_eager"] = max(abs(probs[i] - eager[i]) for i in eager)
    return forward


def print_forward(forward: dict[str, dict], ceiling: float) -> None:
    for label, r in forward.items():
        if "error" in r:
            print(f"shared-prefix forward passes alone, {label}: failed: {r['error'][:500]}")
            continue
        extra = (
            f", max |p(A) diff| vs eager {r['max_p_a_diff_vs_eager']:.1e}"
            if "max_p_a_diff_vs_eager" in r
            else ""
        )
        share = (
            f" = {100 * r['tflops_per_s'] * 1e12 / ceiling:.0f}% of the ceiling" if ceiling == ceiling else ""
        )
        print(
            f"shared-prefix forward passes alone, {label}: {', '.join(f'{x:.2f}s' for x in r['seconds'])} "
            f"(first pass {r['first_pass_s']:.1f}s): {r['pairs_per_s']:.1f} pairs/s, "
            f"{r['tflops_per_s']:.1f} TFLOP/s{share}{extra}"
        )


def device_name(device: str) -> str:
    import torch

    return (
        torch.cuda.get_device_name()
        if device.startswith("cuda")
        else f"CPU ({torch.get_num_threads()} threads)"
    )


def preparation(backend, prompts) -> tuple[dict, list[list[int]], list]:
    """CPU-side preparation of the shared-prefix judge, timed apart: chat template, tokenisation (each
    group's shared prefix once, against tokenising every prompt whole, side by side; both must give the
    same ids) and the prefix-tree layout."""
    t0 = time.perf_counter()
    texts = [
        backend.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in prompts
    ]
    t1 = time.perf_counter()
    whole = backend._token_ids(texts)
    t2 = time.perf_counter()
    token_ids, refused = tokenize_shared(texts, backend._token_ids)
    t3 = time.perf_counter()
    rows = prefix_rows(
        token_ids, sorted(range(len(texts)), key=texts.__getitem__), attention_cost=backend._attention_cost
    )
    t4 = time.perf_counter()
    if token_ids != whole:
        raise SystemExit("tokenize_shared differs from whole-prompt tokenisation")
    total, packed = sum(map(len, token_ids)), sum(len(r.tokens) for r in rows)
    prep = {
        "chat_template_s": t1 - t0,
        "tokenise_whole_s": t2 - t1,
        "tokenise_shared_s": t3 - t2,
        "layout_s": t4 - t3,
        "cuts_refused": refused,
        "prompts": len(texts),
        "prompt_tokens": total,
        "packed_tokens": packed,
        "rows": len(rows),
    }
    print(
        f"preparation of {len(texts)} judge prompts: chat template {t1 - t0:.2f}s; tokenise whole "
        f"{t2 - t1:.2f}s vs shared prefixes once {t3 - t2:.2f}s ({(t2 - t1) / (t3 - t2):.2f}x; identical "
        f"token ids; {refused} "
        f"prompts' cuts refused, tokenised whole); prefix-tree layout {t4 - t3:.2f}s: {len(rows)} rows, "
        f"{packed} of {total} prompt tokens run ({total / packed:.2f}x fewer)"
    )
    return prep, token_ids, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["embedded", "qwen2-0.5b-shape"], default="embedded")
    ap.add_argument("--tokenizer", type=Path, help="tokenizer folder (default: the embedded SmolLM2's)")
    ap.add_argument("--data", type=Path, default=DEV)
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--naive-pairs", type=int, default=1)
    ap.add_argument("--prompt-tokens", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--cpu-threads", type=int)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument(
        "--compile",
        action="store_true",
        help="also time the shared-prefix forward passes with the decoder under torch.compile",
    )
    ap.add_argument(
        "--forward-only",
        action="store_true",
        help="time only the shared-prefix forward passes over the prepared rows (eager; --compile too)",
    )
    ap.add_argument(
        "--prep-only", action="store_true", help="time only the CPU-side preparation (no model runs)"
    )
    args = ap.parse_args()

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model_dir = build_model_dir(args.model, args.tokenizer)
    spec = BackendSpec(model=str(model_dir), batch_size=args.batch_size, cpu_threads=args.cpu_threads)
    shared = make_backend(spec)
    batched = make_backend(spec.model_copy(update={"share_prefixes": False}))
    batched.model, batched.tokenizer = shared.model, shared.tokenizer  # one copy of the weights
    template = get_template("pairwise-v1")
    constitution = Constitution(
        name="bench", principles=[{"id": f"p{i}", "text": t} for i, t in enumerate(PRINCIPLES)]
    )
    pairs = load_pairs(args.data, args.pairs + 2, shared.tokenizer, args.prompt_tokens, template)
    warm, timed = pairs.iloc[:2], pairs.iloc[2:].reset_index(drop=True)
    prompts = [
        template.render(r.prompt, a, b, p.text)
        for r in timed.itertuples()
        for p in constitution.principles
        for a, b in [(r.response_a, r.response_b), (r.response_b, r.response_a)]
    ]
    prep, token_ids, rows = preparation(shared, prompts)
    mean_tokens = sum(map(len, token_ids)) / len(token_ids)
    if args.prep_only:
        return
    if args.forward_only:
        forward, ceiling = (
            forward_variants(shared, rows, token_ids, len(timed), args.compile),
            matmul_ceiling(device),
        )
        print(f"\n{args.model} on {device_name(device)}, {len(timed)} pairs, batch {args.batch_size}")
        print_forward(forward, ceiling)
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "model": args.model,
                        "device": device_name(device),
                        "pairs": len(timed),
                        "ceiling_tflops": ceiling / 1e12,
                        "forward-only": forward,
                    },
                    indent=1,
                )
            )
        return

    results: dict[str, dict] = {}
    for name, backend in [("batched", batched), ("shared-prefix", shared)]:
        judge_pairs(warm, constitution, backend, template, shard_size=10**6, progress=False)
        if device == "cuda":
            torch.cuda.synchronize()
        t0, b0 = time.perf_counter(), backend.stats.seconds
        out = judge_pairs(timed, constitution, backend, template, shard_size=10**6, progress=False)
        if device == "cuda":
            torch.cuda.synchronize()
        secs = time.perf_counter() - t0
        flops = forward_flops(shared.model.config, token_ids, rows if name == "shared-prefix" else None)
        results[name] = {
            "pairs": len(timed),
            "seconds": secs,
            "backend_seconds": backend.stats.seconds - b0,
            "pairs_per_s": len(timed) / secs,
            "prompts_per_s": len(prompts) / secs,
            "tflops_per_s": flops / secs / 1e12,
            "p_a": out.pairs["p_a"].tolist(),
        }
    naive_pairs = timed.iloc[: args.naive_pairs]
    naive_judge(shared, warm.iloc[:1], constitution, template)  # warm-up
    secs, failures = naive_judge(shared, naive_pairs, constitution, template)
    results["naive"] = {
        "pairs": len(naive_pairs),
        "seconds": secs,
        "pairs_per_s": len(naive_pairs) / secs,
        "prompts_per_s": 8 * len(naive_pairs) / secs,
        "parse_failures": failures,
    }

    results["forward-only"] = forward = forward_variants(shared, rows, token_ids, len(timed), args.compile)
    ceiling = matmul_ceiling(device)
    a_sh, a_b = results["shared-prefix"].pop("p_a"), results["batched"].pop("p_a")
    worst = (
        max((abs(x - y) for x, y in zip(a_sh, a_b, strict=False)), default=0.0)
        if a_sh and a_b
        else float("nan")
    )
    name = device_name(device)
    print(
        f"\njudge throughput: {args.model} on {name}, {len(timed)} pairs x 4 principles x 2 orders, "
        f"mean judge prompt {mean_tokens:.0f} tokens, batch {args.batch_size}"
    )
    print(f"{'judge':>14} {'pairs':>6} {'pairs/s':>9} {'prompts/s':>10} {'TFLOP/s':>8} {'x naive':>8}")
    for key in ["naive", "batched", "shared-prefix"]:
        r = results[key]
        tf = f"{r['tflops_per_s']:8.1f}" if "tflops_per_s" in r else f"{'-':>8}"
        print(
            f"{key:>14} {r['pairs']:>6} {r['pairs_per_s']:>9.2f} {r['prompts_per_s']:>10.1f} {tf} "
            f"{r['pairs_per_s'] / results['naive']['pairs_per_s']:>8.1f}"
        )
    print(
        "shared-prefix / batched: "
        f"{results['shared-prefix']['pairs_per_s'] / results['batched']['pairs_per_s']:.2f}x; "
        f"max |p_a diff| between them {worst:.2e}; naive parse failures {results['naive']['parse_failures']}"
        f"/{8 * len(naive_pairs)}"
    )
    for key in ["batched", "shared-prefix"]:
        r = results[key]
        print(
            f"{key}: {r['seconds']:.1f}s in judge_pairs, of which {r['backend_seconds']:.1f}s in the backend "
            "(chat template, tokenisation, layout, forward passes)"
        )
    print(
        f"backend preparation, timed apart: chat template {prep['chat_template_s']:.1f}s, tokenisation "
        f"{prep['tokenise_shared_s']:.1f}s, prefix-tree layout {prep['layout_s']:.1f}s"
    )
    print_forward(forward, ceiling)
    if ceiling == ceiling:
        print(
            f"bf16 8192^3 matmul ceiling {ceiling / 1e12:.0f} TFLOP/s; shared-prefix end to end at "
            f"{100 * results['shared-prefix']['tflops_per_s'] * 1e12 / ceiling:.0f}% of it"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "model": args.model,
                    "device": name,
                    "mean_prompt_tokens": mean_tokens,
                    "ceiling_tflops": ceiling / 1e12,
                    "max_p_a_diff": worst,
                    "preparation": prep,
                    **results,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
