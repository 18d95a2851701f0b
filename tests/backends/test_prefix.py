"""Shared-prefix scoring: the prefix-tree layout (exact expectations, and every prompt sees exactly its own
tokens) and equality with plain scoring on the real SmolLM2 with real judge prompts."""

import random

import pytest

from alignment_dagster.backends import BackendSpec, make_backend
from alignment_dagster.backends.prefix import (
    PackedRow,
    _line_cut,
    common_text_prefix_len,
    prefix_rows,
    tokenize_shared,
)
from alignment_dagster.judge.templates import get_template


def test_rows_lay_out_the_prefix_tree_once_each() -> None:
    header = list(range(100, 120))  # 20 tokens every prompt shares (a template header)
    conv1, conv2 = list(range(200, 260)), list(range(300, 360))  # two 60-token conversations
    prompts = [
        header + conv1 + [1, 1] + [7],  # 0: conversation 1, order 1, principle 7
        header + conv1 + [1, 1] + [8],  # 1
        header + conv1 + [2, 2] + [7],  # 2: conversation 1, order 2
        header + conv1 + [2, 2] + [8],  # 3
        header + conv2 + [5],  # 4
        [9, 9, 9],  # 5: shares nothing
    ]
    rows = prefix_rows(prompts, attention_cost=0.01)
    # Sorted: [9, 9, 9] first. Under the header, one row of 149 tokens would cost 149 + 0.01 * 149^2 = 371;
    # its children as rows (the header repeated in each) cost 88 + 77.4 + 81 + 65.6 = 312: they win.
    # Conversation 1 as one row (165.4) beats one row per order (2 x (84 + 70.6)).
    assert [r.ends for r in rows] == [((5, 2),), ((0, 82), (1, 83), (2, 86), (3, 87)), ((4, 80),)]
    single, tree, alone = rows
    assert single == PackedRow((9, 9, 9), (0, 1, 2), (3, 3, 3), ((5, 2),))
    assert tree.tokens == tuple(header + conv1 + [1, 1, 7, 8, 2, 2, 7, 8])
    assert tree.positions == tuple(range(80)) + (80, 81, 82, 82, 80, 81, 82, 82)
    # A node's tokens are visible up to the end of its subtree: the shared 80 to the whole row, each
    # order's [x, x] to its two principles, a principle's token to itself.
    assert tree.visible_until == (88,) * 80 + (84, 84, 83, 84, 88, 88, 87, 88)
    assert alone.tokens == tuple(header + conv2 + [5]) and alone.visible_until == (81,) * 81
    assert sum(len(r.tokens) for r in rows) == 3 + 88 + 81  # of 4 * 83 + 81 + 3 = 416 prompt tokens
    # Attention for free: everything under the header shares one row. Dearer attention still keeps
    # conversation 1 whole: split, each part would repeat its 80 shared tokens and cost nearly as much.
    assert [r.ends for r in prefix_rows(prompts, attention_cost=0)] == [
        ((5, 2),),
        ((0, 82), (1, 83), (2, 86), (3, 87), (4, 148)),
    ]
    assert prefix_rows(prompts, attention_cost=1.0) == rows


def _seen_from(row: PackedRow, end: int) -> tuple[list[int], list[int]]:
    """Tokens and positions the query at row position `end` attends to, under the mask rule."""
    keys = [k for k in range(end + 1) if end < row.visible_until[k]]
    return [row.tokens[k] for k in keys], [row.positions[k] for k in keys]


def test_every_prompt_sees_exactly_its_own_tokens() -> None:
    rng = random.Random(0)
    trunks = [[rng.randrange(50) for _ in range(rng.randrange(1, 40))] for _ in range(6)]
    prompts = []
    for _ in range(200):  # prompts branching off shared trunks at random depths, some nested, some equal
        base = rng.choice(trunks)
        prompts.append(
            base[: rng.randrange(1, len(base) + 1)] + [rng.randrange(50) for _ in range(rng.randrange(0, 5))]
        )
    prompts += [prompts[3], prompts[3][:1]]
    for cost in [0.0, 2e-4, 0.01, 1.0]:
        rows = prefix_rows(prompts, attention_cost=cost)
        ends = [e for r in rows for e in r.ends]
        assert sorted(p for p, _ in ends) == list(range(len(prompts)))
        for row in rows:
            for prompt, end in row.ends:
                tokens, positions = _seen_from(row, end)
                assert tokens == prompts[prompt] and positions == list(range(len(prompts[prompt])))
        assert sum(len(r.tokens) for r in rows) <= sum(map(len, prompts))
    # Any order is correct (only sharing suffers): the prompts as given, unsorted.
    for row in prefix_rows(prompts, order=list(range(len(prompts))), attention_cost=0.0):
        for prompt, end in row.ends:
            assert _seen_from(row, end)[0] == prompts[prompt]
    with pytest.raises(ValueError, match=r"prompts \[1\] have no tokens"):
        prefix_rows([[1, 2], []])


@pytest.fixture(scope="module")
def backends():
    return make_backend(BackendSpec(batch_size=6)), make_backend(
        BackendSpec(batch_size=6, share_prefixes=False)
    )


def test_shared_prefix_scoring_equals_plain_scoring(backends) -> None:
    shared, plain = backends
    t = get_template("pairwise-v1")
    principles = [
        "Choose the more helpful reply.",
        "Choose the less harmful reply.",
        "Choose the more honest reply.",
        "Choose the reply a careful expert would give.",
    ]
    pairs = [
        ("Human: how do I bake bread?", "Mix flour, water and yeast, knead, let it rise, bake.", "No idea."),
        ("Human: what is 2+2? Please explain it to a child.", "4: two apples and two more make four.", "5"),
    ]
    convs = [
        t.render(prompt, a, b, p) for prompt, x, y in pairs for a, b in [(x, y), (y, x)] for p in principles
    ]
    convs.append(
        [{"role": "user", "content": "Is red a colour? Answer A for yes or B for no."}]
    )  # shares nothing
    got, want = shared.choice_probabilities(convs, ["A", "B"]), plain.choice_probabilities(convs, ["A", "B"])
    worst = max(abs(g["A"] - w["A"]) for g, w in zip(got, want, strict=True))
    print(
        f"\n[prefix] shared vs plain: max |diff| {worst:.2e} over {len(convs)} judge prompts; "
        f"{shared.stats.shared_prefix_tokens}/{shared.stats.prompt_tokens} prompt tokens not recomputed"
    )
    assert worst < 1e-4
    assert shared.stats.prompt_tokens == plain.stats.prompt_tokens
    # Each pair's conversation is shared by 2 orders x 4 principles and each order's replies by 4 principles:
    # most prompt tokens are computed once, not 8 or 4 times.
    assert shared.stats.shared_prefix_tokens > 0.5 * shared.stats.prompt_tokens
    assert plain.stats.shared_prefix_tokens == 0


def test_prompts_prepared_in_chunks_score_like_one_call(backends, monkeypatch) -> None:
    from alignment_dagster.backends import transformers_backend

    shared, plain = backends
    t = get_template("pairwise-v1")
    convs = [
        t.render(f"Human: name a colour, {k}", a, b, p)
        for k in range(3)
        for a, b in [("Red.", "Blue."), ("Blue.", "Red.")]
        for p in ["Choose the more honest reply.", "Choose the more helpful reply."]
    ]
    monkeypatch.setattr(transformers_backend, "_PREP_CHUNK", 5)  # chunks of max(5, batch 6) = 6: 2 chunks
    calls = shared.stats.scoring_calls
    got, want = shared.choice_probabilities(convs, ["A", "B"]), plain.choice_probabilities(convs, ["A", "B"])
    assert max(abs(g["A"] - w["A"]) for g, w in zip(got, want, strict=True)) < 1e-4
    assert shared.stats.scoring_calls - calls >= 2


def test_eager_attention_gets_an_additive_mask_and_transformed_logits_are_refused(backends) -> None:
    _, plain = backends
    t = get_template("pairwise-v1")
    convs = [
        t.render("Human: is the sea salty?", a, b, p)
        for a, b in [("Yes.", "No."), ("No.", "Yes.")]
        for p in ["Choose the more honest reply.", "Choose the more helpful reply."]
    ]
    eager = make_backend(BackendSpec(batch_size=6))
    eager.model.set_attn_implementation(
        "eager"
    )  # a boolean mask added to eager scores would be silently wrong
    got, want = eager.choice_probabilities(convs, ["A", "B"]), plain.choice_probabilities(convs, ["A", "B"])
    assert max(abs(g["A"] - w["A"]) for g, w in zip(got, want, strict=True)) < 1e-4
    eager.model.config.final_logit_softcapping = 30.0  # logits would no longer be lm_head(hidden)
    with pytest.raises(ValueError, match="final_logit_softcapping.*share_prefixes: false"):
        eager.choice_probabilities(convs, ["A", "B"])


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
    principles = [
        "Choose the more helpful reply.",
        "Choose the less harmful reply.",
        "Choose the more honest reply.",
    ]
    conversation = "Human: " + " ".join(f"Tell me fact number {k} about rivers, briefly." for k in range(12))
    pairs = [
        (conversation, "Rivers flow downhill into seas and lakes.", "I don't know."),
        # Both replies start "Sure." and go on with an indented line, so this pair's prompts (both orders
        # share the conversation and that first line) are cut before the indent: byte-level
        # pre-tokenisation joins a newline with the spaces after it when the text goes on, which the cut
        # check must catch.
        (
            "Human: " + " ".join(f"Name lake number {k}, please." for k in range(12)),
            "Sure.\n    step one",
            "Sure.\n    step two",
        ),
    ]
    convs = [
        t.render(prompt, a, b, p) for prompt, x, y in pairs for a, b in [(x, y), (y, x)] for p in principles
    ]
    texts = [
        shared.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in convs
    ]
    token_ids, failed = tokenize_shared(texts, shared._token_ids)
    assert token_ids == shared._token_ids(texts)  # exactly the whole-text tokenisation
    assert failed > 0  # the indented replies' cut was refused and those prompts were tokenised whole
    # Every prompt shares a long prefix with the others of its pair: most tokens are computed once.
    total = sum(map(len, token_ids))
    assert sum(len(r.tokens) for r in prefix_rows(token_ids)) < 0.5 * total
