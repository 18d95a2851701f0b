"""Shared-prefix scoring: compute the KV cache of a prompt prefix once and score every prompt that extends it.

Judge prompts put the principle after the conversation and both replies, so the (pair, order) prefix,
usually >90% of the tokens, is shared by every principle. Scoring each prompt from scratch recomputes that
prefix once per principle; here the prompts are grouped by shared token prefix, each group's prefix runs
once (batched across groups), its KV cache is copied to the group's members, and only the short suffixes
run on top of it. Results equal plain scoring up to float rounding (tested against it).

Grouping needs no knowledge of the template: `tokenize_shared` groups the rendered texts by common prefix
and tokenises each group's prefix once (checking that the cut splits no token, so the ids equal the whole
text's tokenisation), and `shared_prefix_groups` groups token ids directly.
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
    differ = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))  # vectorised: prompts run to 1000s of tokens
    return int(differ[0]) if len(differ) else n


@dataclass(frozen=True)
class PrefixGroup:
    prefix_len: int  # tokens computed once for the whole group
    members: tuple[int, ...]  # indices into the input list


def shared_prefix_groups(token_ids: Sequence[Sequence[int]], min_prefix: int = 16,
                         max_group: int = 16) -> list[PrefixGroup]:
    """Partition prompts into groups whose shared token prefix is computed once, saving the most tokens.

    Prompts are sorted by token ids, so prompts with long common prefixes become neighbours; a group is a
    run of neighbours, and its prefix is the shortest common prefix along the run (capped so every member
    keeps at least one token: the last token's logits are what gets scored). A group of m members with
    prefix P saves (m - 1) * P tokens; a dynamic program over the sorted order picks the runs that save the
    most, so a long (pair, order) prefix is not cut down to the template header that all prompts share.
    Prefixes shorter than `min_prefix` are not worth a second forward pass. Groups hold at most `max_group`
    prompts (a constitution rarely has more principles), which bounds the dynamic program to O(n * max_group).
    """
    order = sorted(range(len(token_ids)), key=lambda i: list(token_ids[i]))
    arrays = [np.asarray(token_ids[i]) for i in order]
    adjacent = [0] + [common_prefix_len(arrays[k - 1], arrays[k]) for k in range(1, len(order))]
    return [PrefixGroup(prefix, members)
            for prefix, members in _best_runs(order, adjacent, [len(t) for t in token_ids], min_prefix, max_group)]


def _best_runs(order: list[int], adjacent: list[int], lengths: list[int], min_prefix: int,
               max_group: int) -> list[tuple[int, tuple[int, ...]]]:
    """The dynamic program behind the grouping: runs of `order` (items sorted so that long common prefixes
    are neighbours; `adjacent[k]` = common prefix of sorted items k-1 and k) that save the most units,
    as (shared prefix, members). Works in tokens or in characters alike."""
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


def tokenize_shared(texts: Sequence[str], encode: Callable[[list[str]], list[list[int]]], *,
                    min_prefix_chars: int = 64, max_group: int = 16,
                    window: int = 64) -> tuple[list[list[int]], list[PrefixGroup], int]:
    """Token ids of `texts` plus their prefix groups, tokenising each group's shared prefix once.

    Judge prompts of one (pair, order) differ only in the principle at the end, so tokenising every prompt
    whole tokenises the shared conversation once per principle. Here the texts are grouped by their
    common *character* prefix (same dynamic program as `shared_prefix_groups`), each group's prefix is cut
    at a line start and tokenised once, and each member's suffix on its own. That equals tokenising the
    whole text only when no token spans the cut, so every cut is checked: the text around it (`window`
    characters each side) must tokenise to its two halves' tokens, for every member. Pre-tokenisers split
    on local patterns, so a cut that passes is exact; a group that fails, and every ungrouped text, is
    tokenised whole and grouped by token prefix instead. Returns (token ids, groups, grouped texts whose cut
    failed the check).
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
            batch += [texts[m][cut:], texts[m][max(0, cut - window) : cut + window], texts[m][cut : cut + window]]
    encoded = iter(encode(batch))
    token_ids: list[list[int] | None] = [None] * n
    groups: list[PrefixGroup] = []
    failed = 0
    for cut, members in planned:
        prefix_ids, left = next(encoded), next(encoded)
        parts = [(next(encoded), next(encoded), next(encoded)) for _ in members]
        if all(around == left + right for _, around, right in parts):
            for m, (suffix, _, _) in zip(members, parts):
                token_ids[m] = prefix_ids + suffix
            groups.append(PrefixGroup(len(prefix_ids), members))
        else:
            failed += len(members)
    whole = [i for i in range(n) if token_ids[i] is None]
    for i, ids in zip(whole, encode([texts[i] for i in whole])):
        token_ids[i] = ids
    groups += [PrefixGroup(g.prefix_len, tuple(whole[k] for k in g.members))
               for g in shared_prefix_groups([token_ids[i] for i in whole], max_group=max_group)]
    return token_ids, groups, failed  # type: ignore[return-value]


def choice_probs_shared(model, token_ids: Sequence[Sequence[int]], groups: Sequence[PrefixGroup],
                        choice_ids: Sequence[int], pad_id: int, device: str) -> tuple[list[int], "torch.Tensor"]:
    """Next-token probabilities restricted to `choice_ids` (renormalised) for every member of `groups` (a
    batch's worth), computing each group's prefix once: (indices in `token_ids`, probabilities tensor with
    one row per index, left on the device so that the caller decides when to wait for it).

    Pass 1 runs the groups' prefixes, left-padded, with a KV cache. The cache rows are then repeated per
    member (`reorder_cache` with repeated indices) and pass 2 runs the members' suffixes, also left-padded,
    on top: the attention mask is [prefix mask | suffix mask] (padding in the middle is masked), and
    explicit position ids continue from each row's real prefix length, so a row sees exactly the positions
    and tokens it would see unpadded.
    """
    import torch

    def left_pad(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = np.full((len(seqs), width), pad_id, dtype=np.int64)  # numpy: one tensor per row is slow
        mask = np.zeros((len(seqs), width), dtype=np.int64)
        for r, s in enumerate(seqs):
            if s:
                ids[r, width - len(s):] = s
                mask[r, width - len(s):] = 1
        return torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)

    # A group whose prefix is empty still needs a one-token "prefix" row for pass 1; move its first token.
    prefixes = [list(token_ids[g.members[0]][: max(1, g.prefix_len)]) for g in groups]
    row_group = [gi for gi, g in enumerate(groups) for _ in g.members]
    rows = [m for g in groups for m in g.members]
    suffixes = [list(token_ids[m][max(1, groups[gi].prefix_len):]) for gi, m in zip(row_group, rows)]

    p_ids, p_mask = left_pad(prefixes)
    with torch.inference_mode():
        out = model(input_ids=p_ids, attention_mask=p_mask, position_ids=(p_mask.cumsum(-1) - 1).clamp(min=0),
                    use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        index = torch.tensor(row_group, dtype=torch.long, device=device)
        cache.reorder_cache(index)
        s_ids, s_mask = left_pad(suffixes)
        plen = p_mask.sum(-1)[index].unsqueeze(-1)
        position_ids = (plen + s_mask.cumsum(-1) - 1).clamp(min=0)
        mask = torch.cat([p_mask[index], s_mask], dim=-1)
        logits = model(input_ids=s_ids, attention_mask=mask, position_ids=position_ids, past_key_values=cache,
                       use_cache=True, logits_to_keep=1).logits[:, -1, :]
        probs = torch.softmax(logits[:, list(choice_ids)].float(), dim=-1)
    return rows, probs


def computed_tokens(token_ids: Sequence[Sequence[int]], groups: Sequence[PrefixGroup]) -> int:
    """Tokens that run through the model with sharing (each prefix once, then the suffixes)."""
    return sum(max(1, g.prefix_len) + sum(len(token_ids[m]) - max(1, g.prefix_len) for m in g.members)
               for g in groups)
