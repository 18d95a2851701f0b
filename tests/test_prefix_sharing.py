"""Shared-prefix scoring: grouping by token prefix (exact expectations) and equality with plain scoring on
the real SmolLM2 with real judge prompts."""

import pytest

from alignment_dagster.backends import BackendSpec, make_backend
from alignment_dagster.backends.prefix import (
    PrefixGroup,
    _line_cut,
    common_text_prefix_len,
    computed_tokens,
    shared_prefix_groups,
    tokenize_shared,
)
from alignment_dagster.judge.templates import get_template


def test_groups_follow_shared_prefixes() -> None:
    header = list(range(100, 120))  # 20 tokens every prompt shares (a template header)
    pair1, pair2 = header + list(range(200, 260)), header + list(range(300, 360))  # 80-token prefixes
    prompts = [
        pair1 + [1, 2, 3],  # 0
        pair2 + [1, 2],  # 1
        pair1 + [4, 5],  # 2
        pair2 + [6],  # 3
        pair1 + [1, 9],  # 4: shares one more token with 0, the group prefix stays 80
        [7, 8, 9],  # 5: shares nothing
    ]
    groups = shared_prefix_groups(prompts, min_prefix=16)
    # Sorted by token ids: [5], then the pair1 prompts (suffixes [1,2,3] < [1,9] < [4,5]),
    # then pair2 prompts; the 20-token header alone does not glue the two pairs together.
    assert groups == [PrefixGroup(0, (5,)), PrefixGroup(80, (0, 4, 2)), PrefixGroup(80, (1, 3))]
    total = sum(len(p) for p in prompts)
    assert computed_tokens(prompts, groups) == total - 2 * 80 - 1 * 80  # prefix computed once per group


def test_prefix_leaves_one_token_and_short_prefixes_are_not_shared() -> None:
    same = [list(range(40)), list(range(40))]  # identical prompts: the last token is still scored per prompt
    assert shared_prefix_groups(same, min_prefix=16) == [PrefixGroup(39, (0, 1))]
    short = [[1, 2, 3, 4], [1, 2, 3, 5]]
    assert shared_prefix_groups(short, min_prefix=16) == [PrefixGroup(0, (0,)), PrefixGroup(0, (1,))]


def test_a_neighbour_that_would_shrink_a_big_group_starts_a_new_one() -> None:
    long_prefix = list(range(1000, 1100))
    prompts = [long_prefix + [1], long_prefix + [2], long_prefix + [3], long_prefix[:30] + [9, 9]]
    # Prompt 3 sorts first (9 < 1030); one group of all four would share only 30 tokens (saving 90), the
    # three long ones share 100 (saving 200).
    groups = shared_prefix_groups(prompts, min_prefix=16)
    assert groups == [PrefixGroup(0, (3,)), PrefixGroup(100, (0, 1, 2))]


@pytest.fixture(scope="module")
def backends():
    return make_backend(BackendSpec(batch_size=6)), make_backend(BackendSpec(batch_size=6, share_prefixes=False))


def test_shared_prefix_scoring_equals_plain_scoring(backends) -> None:
    shared, plain = backends
    t = get_template("pairwise-v1")
    principles = ["Choose the more helpful reply.", "Choose the less harmful reply.",
                  "Choose the more honest reply.", "Choose the reply a careful expert would give."]
    pairs = [("Human: how do I bake bread?", "Mix flour, water and yeast, knead, let it rise, bake.", "No idea."),
             ("Human: what is 2+2? Please explain it to a child.", "4: two apples and two more make four.", "5")]
    convs = [t.render(prompt, a, b, p) for prompt, x, y in pairs for a, b in [(x, y), (y, x)] for p in principles]
    convs.append([{"role": "user", "content": "Is red a colour? Answer A for yes or B for no."}])  # shares nothing
    got, want = shared.choice_probabilities(convs, ["A", "B"]), plain.choice_probabilities(convs, ["A", "B"])
    worst = max(abs(g["A"] - w["A"]) for g, w in zip(got, want))
    print(f"\n[prefix] shared vs plain: max |diff| {worst:.2e} over {len(convs)} judge prompts; "
          f"{shared.stats.shared_prefix_tokens}/{shared.stats.prompt_tokens} prompt tokens not recomputed")
    assert worst < 1e-4
    assert shared.stats.prompt_tokens == plain.stats.prompt_tokens
    # 4 (pair, order) prefixes, each shared by 4 principles: most prompt tokens are computed once, not 4 times.
    assert shared.stats.shared_prefix_tokens > 0.5 * shared.stats.prompt_tokens
    assert plain.stats.shared_prefix_tokens == 0


def test_text_prefix_and_line_cut() -> None:
    assert common_text_prefix_len("abcdef", "abcxyz") == 3
    assert common_text_prefix_len("abc", "abcdef") == 3
    assert common_text_prefix_len("", "abc") == 0
    assert common_text_prefix_len("same", "same") == 4
    # The cut goes after a newline that ends a non-blank line, never inside a run of blank lines.
    text = "header\nline one\n\n### Reply A\nyes"
    assert _line_cut(text, len(text)) == text.index("### Reply A") + len("### Reply A\n")
    assert _line_cut(text, text.index("### Reply A")) == len("header\nline one\n")  # not after the blank line
    assert _line_cut("no newline here", 10) == 0


def test_tokenising_shared_prefixes_once_equals_tokenising_each_prompt(backends) -> None:
    shared, _ = backends
    t = get_template("pairwise-v1")
    principles = ["Choose the more helpful reply.", "Choose the less harmful reply.", "Choose the more honest reply."]
    conversation = "Human: " + " ".join(f"Tell me fact number {k} about rivers, briefly." for k in range(12))
    pairs = [(conversation, "Rivers flow downhill into seas and lakes.", "I don't know."),
             # An empty reply puts three newlines in a row after "### Reply A", where this pair's prompts
             # (both orders share the long conversation) are cut: byte-level pre-tokenisation joins the
             # newlines differently when the text ends there, which the cut check must catch.
             ("Human: " + " ".join(f"Name lake number {k}, please." for k in range(12)), "", "Lakes.")]
    convs = [t.render(prompt, a, b, p) for prompt, x, y in pairs for a, b in [(x, y), (y, x)] for p in principles]
    texts = [shared.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in convs]
    token_ids, groups, failed = tokenize_shared(texts, shared._token_ids)
    assert token_ids == shared._token_ids(texts)  # exactly the whole-text tokenisation
    assert sorted(m for g in groups for m in g.members) == list(range(len(texts)))
    assert all(0 < g.prefix_len < min(len(token_ids[m]) for m in g.members) for g in groups)
    assert failed > 0  # the empty-reply prompts' cut was refused and they were tokenised whole
    # Every prompt shares a long prefix with the others of its pair: most tokens are computed once.
    total = sum(map(len, token_ids))
    assert computed_tokens(token_ids, groups) < 0.5 * total
