"""Shared-prefix scoring: compute the KV cache of a prompt prefix once and score every prompt that extends it.

Judge prompts put the principle after the conversation and both replies, so the (pair, order) prefix,
usually >90% of the tokens, is shared by every principle. Scoring each prompt from scratch recomputes that
prefix once per principle; here the prompts are grouped by shared token prefix, each group's prefix runs
once (batched across groups), its KV cache is copied to the group's members, and only the short suffixes
run on top of it. Results equal plain scoring up to float rounding (tested against it).

Grouping works on token ids, so it needs no knowledge of the template, and a prompt never loses tokens:
the prefix is cut from the prompt's own tokenization.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


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
    n = len(order)
    arrays = [np.asarray(token_ids[i]) for i in order]
    adjacent = [0] + [common_prefix_len(arrays[k - 1], arrays[k]) for k in range(1, n)]
    best = [0] * (n + 1)  # best[j]: most tokens saved on the first j sorted prompts
    cut = [0] * (n + 1)  # best[j]'s last group starts at sorted position cut[j]
    shared_of: dict[tuple[int, int], int] = {}
    for j in range(1, n + 1):
        best[j], cut[j] = best[j - 1], j - 1  # the j-th prompt alone
        shared = None
        shortest = len(token_ids[order[j - 1]])
        for i in range(j - 2, max(-1, j - 1 - max_group), -1):  # group = sorted positions i .. j-1
            shared = adjacent[i + 1] if shared is None else min(shared, adjacent[i + 1])
            shortest = min(shortest, len(token_ids[order[i]]))
            prefix = min(shared, shortest - 1)
            if prefix < min_prefix:
                break  # it only shrinks as the group grows
            if best[i] + (j - i - 1) * prefix > best[j]:
                best[j], cut[j] = best[i] + (j - i - 1) * prefix, i
                shared_of[(i, j)] = prefix
    groups: list[PrefixGroup] = []
    j = n
    while j > 0:
        i = cut[j]
        groups.append(PrefixGroup(shared_of.get((i, j), 0), tuple(order[i:j])))
        j = i
    return groups[::-1]


def choice_probs_shared(model, token_ids: Sequence[Sequence[int]], groups: Sequence[PrefixGroup],
                        choice_ids: Sequence[int], pad_id: int, device: str) -> list[tuple[int, list[float]]]:
    """Next-token probabilities restricted to `choice_ids` (renormalised) for every member of `groups` (a
    batch's worth), computing each group's prefix once: (index in `token_ids`, probabilities) per member.

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
        probs = torch.softmax(logits[:, list(choice_ids)].float(), dim=-1).cpu().tolist()
    return list(zip(rows, probs))


def computed_tokens(token_ids: Sequence[Sequence[int]], groups: Sequence[PrefixGroup]) -> int:
    """Tokens that run through the model with sharing (each prefix once, then the suffixes)."""
    return sum(max(1, g.prefix_len) + sum(len(token_ids[m]) - max(1, g.prefix_len) for m in g.members)
               for g in groups)
