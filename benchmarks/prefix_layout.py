"""Shared-prefix scoring, prefix tree in packed rows (now) vs one shared prefix per group with a KV cache
(before), side by side on the same judge prompts, model and batch size, in one run.

    .venv/bin/python benchmarks/prefix_layout.py --pairs 8                       # CPU, embedded SmolLM2
    python3 benchmarks/prefix_layout.py --model qwen2-0.5b-shape --pairs 512 --batch-size 1024

"Before" is `alignment_dagster/backends/prefix.py` as of `--before` (default f079da6, the last commit with
the grouped layout), loaded from git history: prompts grouped by their longest shared prefix (one level:
for a judge pair, either each order's conversation + replies, or the conversation for both orders), each
group's prefix run once with a KV cache that is repeated per member, then the members' suffixes on top
(two forward passes per batch). "Now" is the current module: the whole prefix tree (conversation once per
pair, each order's replies once, then the principles) laid out in one row per pair and scored in one
forward pass with a tree attention mask. Both start from the same token ids; only the forward passes are
timed (after a warm-up), and the probabilities must agree.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alignment_dagster.backends import BackendSpec, make_backend
from alignment_dagster.backends.choices import first_token_ids
from alignment_dagster.backends.prefix import choice_probs_packed, prefix_rows, tokenize_shared
from alignment_dagster.judge.templates import get_template
from benchmarks.judge import DEV, PRINCIPLES, build_model_dir, load_pairs  # noqa: E402


def load_before(rev: str):
    """The grouped layout's module: a .py file, or `prefix.py` at a git revision."""
    if rev.endswith(".py") and Path(rev).is_file():  # a copy, where no git history travels (a GPU machine)
        source = Path(rev).read_text()
    else:
        source = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{rev}:alignment_dagster/backends/prefix.py"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    path = Path(tempfile.mkdtemp(prefix="prefix-before-")) / "prefix_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("prefix_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["prefix_before"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def group_batches(before, groups, bs: int):
    """The transformers backend's batching of groups as of `--before`."""
    chunks = [
        before.PrefixGroup(g.prefix_len, g.members[k : k + bs])
        for g in groups
        for k in range(0, len(g.members), bs)
    ]
    chunks.sort(key=lambda g: g.prefix_len)
    batch = []
    for g in chunks:
        if batch and sum(len(b.members) for b in batch) + len(g.members) > bs:
            yield batch
            batch = []
        batch.append(g)
    if batch:
        yield batch


def timed(fn, device: str) -> tuple[float, dict[int, float]]:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    probs = {
        i: p for rows, t in out for i, p in zip(rows, t[:, 0].cpu().tolist(), strict=False)
    }  # waits for the device
    return time.perf_counter() - t0, probs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["embedded", "qwen2-0.5b-shape"], default="embedded")
    ap.add_argument(
        "--before",
        default="f079da6",
        help="git revision of the grouped layout, or a copy of that revision's prefix.py",
    )
    ap.add_argument("--tokenizer", type=Path, help="tokenizer folder (default: the embedded SmolLM2's)")
    ap.add_argument("--data", type=Path, default=DEV)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--prompt-tokens", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    import torch

    before = load_before(args.before)
    backend = make_backend(
        BackendSpec(model=str(build_model_dir(args.model, args.tokenizer)), batch_size=args.batch_size)
    )
    tok, model, device = backend.tokenizer, backend.model, backend.device
    template = get_template("pairwise-v1")
    pairs = load_pairs(args.data, args.pairs, tok, args.prompt_tokens, template)
    prompts = [
        template.render(r.prompt, a, b, p)
        for r in pairs.itertuples()
        for p in PRINCIPLES
        for a, b in [(r.response_a, r.response_b), (r.response_b, r.response_a)]
    ]
    texts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in prompts]
    token_ids, _ = tokenize_shared(texts, backend._token_ids)
    ids_before, groups, _ = before.tokenize_shared(texts, backend._token_ids)
    assert ids_before == token_ids
    rows = prefix_rows(
        token_ids, sorted(range(len(texts)), key=texts.__getitem__), attention_cost=backend._attention_cost
    )
    choice_ids = first_token_ids(tok, ["A", "B"], backend._prefix)
    pad = tok.pad_token_id

    def run_before():
        return [
            before.choice_probs_shared(model, token_ids, b, choice_ids, pad, device)
            for b in group_batches(before, groups, args.batch_size)
        ]

    def run_now():
        return [choice_probs_packed(model, b, choice_ids, pad, device) for b in backend._row_batches(rows)]

    total = sum(map(len, token_ids))
    tokens_before, tokens_now = before.computed_tokens(token_ids, groups), sum(len(r.tokens) for r in rows)
    padded_before = 0  # both passes left-pad: prefixes to the batch's longest prefix, suffixes likewise
    for b in group_batches(before, groups, args.batch_size):
        plen = [max(1, g.prefix_len) for g in b]
        slen = [len(token_ids[m]) - p for g, p in zip(b, plen, strict=False) for m in g.members]
        padded_before += len(b) * max(plen) + len(slen) * max(slen)
    padded_now = sum(len(b) * max(len(r.tokens) for r in b) for b in backend._row_batches(rows))
    timed(run_before, device), timed(run_now, device)  # warm-up
    results = {"before": [], "now": []}
    for _ in range(args.repeats):  # interleaved, so that drifting machine load hits both alike
        for name, fn in [("before", run_before), ("now", run_now)]:
            secs, probs = timed(fn, device)
            results[name].append((secs, probs))
    worst = max(abs(results["before"][0][1][i] - results["now"][0][1][i]) for i in range(len(prompts)))
    where = (
        torch.cuda.get_device_name()
        if device.startswith("cuda")
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(
        f"\nshared-prefix layouts: {args.model} on {where}, {len(pairs)} pairs x 4 principles x 2 orders = "
        f"{len(prompts)} prompts, mean {total / len(prompts):.0f} tokens, batch {args.batch_size}"
    )
    print(
        f"tokens run: before {tokens_before} ({total / tokens_before:.2f}x fewer than whole prompts), "
        f"now {tokens_now} ({total / tokens_now:.2f}x fewer; {tokens_before / tokens_now:.2f}x fewer than "
        "before); "
        f"with padding: before {padded_before}, now {padded_now}"
    )
    for k in range(args.repeats):
        b, n = results["before"][k][0], results["now"][k][0]
        print(
            f"run {k + 1}: before {b:.2f}s ({len(prompts) / b:.1f} prompts/s), now {n:.2f}s "
            f"({len(prompts) / n:.1f} prompts/s): {b / n:.2f}x"
        )
    print(f"max |p(A)| difference between the layouts: {worst:.2e}")


if __name__ == "__main__":
    main()
