"""The transformers backend on the real SmolLM2: generation, and choice probabilities vs direct logits."""

import pytest
import torch

from alignment_dagster.backends import BackendSpec, Sampling, make_backend
from alignment_dagster.backends.transformers_backend import first_token_ids


@pytest.fixture(scope="module")
def backend():
    return make_backend(BackendSpec(batch_size=4))


CONVS = [
    [{"role": "user", "content": "Is red a colour? Answer A for yes or B for no."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Which is larger, A: 3 or B: 7? Answer A or B."}],
    [{"role": "user", "content": "Pick A or B. " + "This prompt is deliberately much longer than the others. " * 6}],
]


def test_generation_returns_text(backend) -> None:
    out = backend.generate(CONVS[:2], n=2, sampling=Sampling(max_new_tokens=12, temperature=0.8))
    assert [len(o) for o in out] == [2, 2]
    assert all(isinstance(t, str) and t.strip() for o in out for t in o)
    greedy = backend.generate(CONVS[:1], n=1, sampling=Sampling(max_new_tokens=12, temperature=0.0))
    assert greedy == backend.generate(CONVS[:1], n=1, sampling=Sampling(max_new_tokens=12, temperature=0.0))
    assert backend.stats.generated_tokens > 0 and backend.identity.startswith("transformers:smollm2-135m-instruct@")


def test_choice_probabilities_match_direct_logits(backend) -> None:
    probs = backend.choice_probabilities(CONVS, ["A", "B"])  # one padded batch
    ids = first_token_ids(backend.tokenizer, ["A", "B"])
    for conv, p in zip(CONVS, probs):
        assert sum(p.values()) == pytest.approx(1.0, abs=1e-6)
        text = backend.tokenizer.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        enc = backend.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            full = torch.softmax(backend.model(**enc).logits[0, -1].float(), dim=-1)  # whole vocabulary
        restricted = full[ids] / full[ids].sum()
        assert p["A"] == pytest.approx(float(restricted[0]), abs=1e-4)
        assert p["B"] == pytest.approx(float(restricted[1]), abs=1e-4)


def test_choices_sharing_a_first_token_are_rejected(backend) -> None:
    with pytest.raises(ValueError, match="share a first token"):
        backend.choice_probabilities(CONVS[:1], ["Yes", "Yes!"])
