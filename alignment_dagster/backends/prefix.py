"""Shared-prefix scoring: run every token a set of prompts has in common once, in one forward pass.

Judge prompts put the principle after the conversation and both replies, so the prompts of one pair form
a tree: the conversation, shared by both orders and every principle; each order's replies, shared by that
order's principles; then one short principle suffix per prompt. Scoring each prompt from scratch
recomputes the conversation 2 x principles times. Here the prompts' token ids are arranged in a prefix
tree (`prefix_rows`), subtrees (a judge pair's, typically) are laid out in one row each in depth-first
order, every tree node's tokens once, and one forward pass scores the row with an attention mask that
lets each token see exactly its own prompt's earlier tokens (`choice_probs_packed`). Position ids are
each token's position in its prompt, so every prompt is scored as if alone: results equal plain scoring
up to float rounding (tested).

Depth-first order makes the mask one integer per key: a node's subtree is a contiguous run of the row,
so key k is visible to the queries q with k <= q < visible_until[k], the end of its node's subtree.

Tokenisation needs no knowledge of the template either: `tokenize_shared` groups the rendered texts by
common prefix and tokenises each group's prefix once (checking that the cut splits no token, so the ids
equal the whole text's tokenisation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differ = np.flatnonzero(
        np.asarray(a[:n]) != np.asarray(b[:n])
    )  # vectorised: prompts run to 1000s of tokens
    return int(differ[0]) if len(differ) else n


def _best_runs(
    order: list[int], adjacent: list[int], lengths: list[int], min_prefix: int, max_group: int
) -> list[tuple[int, tuple[int, ...]]]:
    """The dynamic program behind the grouping: runs of `order` (items sorted so that long common prefixes
    are neighbours; `adjacent[k]` = common prefix of sorted items k-1 and k) that save the most units,
    as (shared prefix, members). A group of m members with prefix P saves (m - 1) * P units, so a long
    (pair, order) prefix is not cut down to the template header that all prompts share; prefixes shorter
    than `min_prefix` are not worth it, and groups hold at most `max_group` items (O(n * max_group))."""
    n = len(order)
    best = [0] * (n + 1)  # best[j]: most units saved on the first j sorted items
    cut = [0] * (n + 1)  # best[j]'s last group starts at sorted position cut[j]
    shared_of: dict[tuple[int, int], int] = {}
    for j in range(1, n + 1):
        best[j], cut[j] = best[j - 1], j - 1  # the j-th item alone
        shared = None
        shortest = lengths[order[j - 1]]
        for i in range(j - 2, max(-1, j - 1 - max_group), -1):  # group = sorted positions i .. j-1
            shared = adjacent[i + 1] if shared is None else min(shared, adjacent[i + 1])
            shortest = min(shortest, lengths[order[i]])
            prefix = min(shared, shortest - 1)
            if prefix < min_prefix:
                break  # it only shrinks as the group grows
            if best[i] + (j - i - 1) * prefix > best[j]:
                best[j], cut[j] = best[i] + (j - i - 1) * prefix, i
                shared_of[(i, j)] = prefix
    runs: list[tuple[int, tuple[int, ...]]] = []
    j = n
    while j > 0:
        i = cut[j]
        runs.append((shared_of.get((i, j), 0), tuple(order[i:j])))
        j = i
    return runs[::-1]


def common_text_prefix_len(a: str, b: str) -> int:
    """Length of the common prefix of two strings, by binary search on slice equality (C-speed compares;
    a character loop in Python costs more than tokenising the prompts)."""
    lo, hi = 0, min(len(a), len(b))  # a[:lo] == b[:lo] holds throughout
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _line_cut(text: str, limit: int) -> int:
    """Start of the last line that begins before `limit`, cutting after a newline that ends a non-blank
    line: inside a run of blank lines, byte-level pre-tokenisers merge the newlines differently when the
    text ends there ("\\n\\n" at the end is one piece, before "###" it is two)."""
    c = text.rfind("\n", 0, limit)
    while c > 0 and text[c - 1].isspace():
        c = text.rfind("\n", 0, c)
    return c + 1 if c > 0 else 0


def tokenize_shared(
    texts: Sequence[str],
    encode: Callable[[list[str]], list[list[int]]],
    *,
    min_prefix_chars: int = 64,
    max_group: int = 16,
    window: int = 64,
) -> tuple[list[list[int]], int]:
    """Token ids of `texts`, tokenising each group's shared prefix once.

    Judge prompts of one (pair, order) differ only in the principle at the end, so tokenising every prompt
    whole tokenises the shared conversation once per principle. Here the texts are grouped by their
    common *character* prefix (`_best_runs`), each group's prefix is cut at a line start and tokenised
    once, and each member's suffix on its own. That equals tokenising the
    whole text only when no token spans the cut, so every cut is checked: the text around it (`window`
    characters each side) must tokenise to its two halves' tokens, for every member. Pre-tokenisers split
    on local patterns, so a cut that passes is exact; a group that fails, and every ungrouped text, is
    tokenised whole instead. Returns (token ids, grouped texts whose cut failed the check).
    """
    n = len(texts)
    order = sorted(range(n), key=texts.__getitem__)
    adjacent = [0] + [common_text_prefix_len(texts[order[k - 1]], texts[order[k]]) for k in range(1, n)]
    runs = _best_runs(order, adjacent, [len(t) for t in texts], min_prefix_chars, max_group)
    planned = []
    for prefix, members in runs:
        cut = _line_cut(texts[members[0]], prefix)
        if cut >= min_prefix_chars:
            planned.append((cut, members))
    batch: list[str] = []
    for cut, members in planned:
        first = texts[members[0]]
        batch += [first[:cut], first[max(0, cut - window) : cut]]
        for m in members:
            batch += [
                texts[m][cut:],
                texts[m][max(0, cut - window) : cut + window],
                texts[m][cut : cut + window],
            ]
    encoded = iter(encode(batch))
    token_ids: list[list[int] | None] = [None] * n
    failed = 0
    for _cut, members in planned:
        prefix_ids, left = next(encoded), next(encoded)
        parts = [(next(encoded), next(encoded), next(encoded)) for _ in members]
        if all(around == left + right for _, around, right in parts):
            for m, (suffix, _, _) in zip(members, parts, strict=False):
                token_ids[m] = prefix_ids + suffix
        else:
            failed += len(members)
    whole = [i for i in range(n) if token_ids[i] is None]
    for i, ids in zip(whole, encode([texts[i] for i in whole]), strict=False):
        token_ids[i] = ids
    return token_ids, failed  # type: ignore[return-value]


@dataclass(frozen=True)
class PackedRow:
    """Prompts that share prefixes, laid out for one forward pass: every prefix-tree node's tokens once,
    in depth-first order."""

    tokens: tuple[int, ...]
    positions: tuple[int, ...]  # each token's position in its own prompt
    visible_until: tuple[int, ...]  # key k is seen by queries k <= q < visible_until[k] (its subtree's end)
    ends: tuple[tuple[int, int], ...]  # (prompt index, row position of its last token): the scored positions

    @property
    def prompts(self) -> int:
        return len(self.ends)


class _Node:
    __slots__ = ("depth", "children", "prompt", "tokens", "split")

    def __init__(self, depth: int, prompt: int | None = None):
        self.depth = depth  # tokens from the prompt start to this node's end
        self.children: list[_Node] = []
        self.prompt = prompt  # leaves only: the prompt index
        self.tokens = depth  # tokens of the subtree as one row (the path from position 0 included)
        self.split = float("inf")  # cost of the subtree laid out in its children's best rows


def _prefix_tree(token_ids: Sequence[Sequence[int]], order: Sequence[int]) -> _Node:
    """Compressed prefix tree of the prompts, built from `order`'s adjacent common prefixes (the
    LCP-interval construction). Any order is correct: a node's depth is the smallest common prefix of
    adjacent prompts under it, which all of them share. An order where long shared prefixes are neighbours
    (sorted texts) shares the most. Each prompt keeps at least its last token to itself: that is the
    position whose next-token distribution is scored."""
    root = _Node(0)
    if not order:
        return root
    arrays = [np.asarray(token_ids[i]) for i in order]
    stack = [root]  # the open path, depths increasing
    stack[-1].children.append(_Node(len(arrays[0]), order[0]))
    for k in range(1, len(order)):
        shared = min(common_prefix_len(arrays[k - 1], arrays[k]), len(arrays[k - 1]) - 1, len(arrays[k]) - 1)
        shared = max(0, shared)
        while stack[-1].depth > shared:
            stack.pop()
        if stack[-1].depth < shared:  # the previous prompt's branch forks here
            node = _Node(shared)
            node.children.append(stack[-1].children.pop())
            stack[-1].children.append(node)
            stack.append(node)
        stack[-1].children.append(_Node(len(arrays[k]), order[k]))
    return root


def _layout(top: _Node, token_ids: Sequence[Sequence[int]]) -> PackedRow:
    """One row for `top`'s subtree, depth first; tokens above `top` are repeated in the row (from 0)."""
    tokens: list[int] = []
    positions: list[int] = []
    visible: list[int] = []
    ends: list[tuple[int, int]] = []
    open_spans: list[tuple[int, int]] = []  # (first, last + 1) row positions of nodes whose subtree is open
    todo: list[tuple[_Node, int] | tuple[None, int]] = [(top, 0)]
    while todo:
        node, start = todo.pop()
        if node is None:  # the subtree of open_spans[start] is complete
            first, stop = open_spans[start]
            visible[first:stop] = [len(tokens)] * (stop - first)
            continue
        sample = node
        while sample.prompt is None:
            sample = sample.children[0]
        first = len(tokens)
        tokens.extend(token_ids[sample.prompt][start : node.depth])
        positions.extend(range(start, node.depth))
        visible.extend([0] * (node.depth - start))
        if node.prompt is not None:
            ends.append((node.prompt, len(tokens) - 1))
        open_spans.append((first, len(tokens)))
        todo.append((None, len(open_spans) - 1))
        todo.extend((c, node.depth) for c in reversed(node.children))
    return PackedRow(tuple(tokens), tuple(positions), tuple(visible), tuple(ends))


def prefix_rows(
    token_ids: Sequence[Sequence[int]], order: Sequence[int] | None = None, *, attention_cost: float = 2e-4
) -> list[PackedRow]:
    """The prompts as packed rows, each a subtree of their prefix tree (tokens above it repeated).

    Which subtrees become rows is chosen to minimise a cost model: a row of T tokens costs T +
    attention_cost * T^2, the second term being the dense attention over the row (the mask hides most of
    it, the kernel computes it anyway). `attention_cost` is attention FLOPs per (query, key) over the rest
    of the model's FLOPs per token (`attention_cost(model)`). So a judge pair's conversation, replies and
    principles share one row, while two pairs that share only the template header go to separate rows.
    `order` should put prompts with long common prefixes next to each other (default: sorted by token ids;
    texts sorted as strings are as good and cheaper). Every prompt is in exactly one row, as one of its
    `ends`."""
    empty = [i for i, t in enumerate(token_ids) if not t]
    if empty:
        raise ValueError(f"prompts {empty[:5]} have no tokens: there is no position to score")
    if order is None:
        order = sorted(range(len(token_ids)), key=lambda i: list(token_ids[i]))
    root = _prefix_tree(token_ids, order)
    post: list[_Node] = []
    todo = [root]
    while todo:  # iterative: nested prompts can make the tree deeper than Python's recursion limit
        node = todo.pop()
        post.append(node)
        todo.extend(node.children)

    def cost(node: _Node) -> float:
        return node.tokens + attention_cost * node.tokens * node.tokens

    for node in reversed(post):
        if node.prompt is None:
            node.tokens = node.depth + sum(c.tokens - node.depth for c in node.children)
            node.split = sum(min(cost(c), c.split) for c in node.children)
    rows: list[PackedRow] = []
    todo = list(reversed(root.children))
    while todo:
        node = todo.pop()
        if cost(node) <= node.split:
            rows.append(_layout(node, token_ids))
        else:
            todo.extend(reversed(node.children))
    return rows


def attention_cost(model) -> float:
    """Attention FLOPs per (query, key) pair over the model's other FLOPs per token (`prefix_rows`)."""
    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    per_pair = 2 * 2 * config.num_hidden_layers * heads * head_dim  # QK^T and AV
    return per_pair / (2 * model.num_parameters(exclude_embeddings=True))


def choice_probs_packed(
    model, rows: Sequence[PackedRow], choice_ids: Sequence[int], pad_id: int, device: str
) -> tuple[list[int], torch.Tensor]:
    """Next-token probabilities restricted to `choice_ids` (renormalised) for every prompt of `rows` (a
    batch's worth), in one forward pass: (prompt indices, probabilities with one row per index, left on
    the device so that the caller decides when to wait for them).

    Rows are right-padded; a pad token sees only itself. The mask is built on the device from the rows'
    `visible_until`, so only small integer arrays cross to it. Only the choices' logits are computed from
    the final hidden states (the softmax is over the choices alone)."""
    import torch

    width = max(len(r.tokens) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)  # numpy: one tensor per row is slow
    pos = np.zeros((len(rows), width), dtype=np.int64)
    until = np.tile(np.arange(1, width + 1, dtype=np.int64), (len(rows), 1))
    where, prompts = [], []
    for r, row in enumerate(rows):
        n = len(row.tokens)
        ids[r, :n], pos[r, :n], until[r, :n] = row.tokens, row.positions, row.visible_until
        for prompt, end in row.ends:
            prompts.append(prompt)
            where.append(r * width + end)
    decoder, head = _decoder_and_head(model)
    ids_t, pos_t, until_t, where_t, choices_t = (
        _to_device(a, device) for a in (ids, pos, until, np.asarray(where), np.asarray(choice_ids))
    )
    steps = torch.arange(width, device=device)
    visible = (steps[None, None, :] <= steps[None, :, None]) & (steps[None, :, None] < until_t[:, None, :])
    with torch.inference_mode():
        mask = _attention_mask(visible[:, None], model)
        # use_cache=False: otherwise the decoder copies every layer's keys and values into a cache nobody
        # reads.
        hidden = decoder(
            input_ids=ids_t, attention_mask=mask, position_ids=pos_t, use_cache=False
        ).last_hidden_state
        hidden = hidden.reshape(-1, hidden.shape[-1])[where_t]
        logits = hidden @ head.weight[choices_t].T
        if head.bias is not None:
            logits = logits + head.bias[choices_t]
        probs = torch.softmax(logits.float(), dim=-1)
    return prompts, probs


def _to_device(array: np.ndarray, device: str) -> torch.Tensor:
    """Host array to the device without waiting for the GPU: a copy from pageable memory synchronises the
    stream (so the host would wait for every queued batch), one from pinned memory is queued like a kernel."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))
    if not device.startswith("cuda"):
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


# Config fields of architectures whose logits are more than lm_head(final hidden state).
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "lm_head_multiplier")


def _decoder_and_head(model):
    import torch

    config = model.config
    odd = [f for f in _LOGIT_TRANSFORMS if getattr(config, f, None) not in (None, 1, 1.0)]
    head = model.get_output_embeddings()
    if odd or not isinstance(head, torch.nn.Linear):
        raise ValueError(
            f"shared-prefix scoring reads logits as lm_head(hidden state); {type(model).__name__} "
            f"transforms them ({', '.join(odd) or type(head).__name__}): set share_prefixes: false"
        )
    return model.get_decoder(), head


def _attention_mask(visible: torch.Tensor, model) -> torch.Tensor:
    """The [rows, 1, q, k] mask in the form the model's attention takes: boolean for SDPA, additive
    (0 / dtype min) for eager attention; kernels without custom masks (flash attention) cannot run it."""
    import torch

    impl = getattr(model.config, "_attn_implementation", "sdpa") or "sdpa"
    if impl == "sdpa":
        return visible
    if impl == "eager":
        dtype = model.get_output_embeddings().weight.dtype
        return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill(
            ~visible, torch.finfo(dtype).min
        )
    raise ValueError(
        f"shared-prefix scoring needs a custom attention mask, which attn_implementation={impl!r} "
        "does not take: load the model with sdpa or eager attention, or set share_prefixes: false"
    )
