"""The transformers backend on the real SmolLM2: generation, and choice probabilities vs direct logits."""

import pytest
import torch

from alignment_dagster.backends import BackendSpec, Sampling, make_backend
from alignment_dagster.backends.choices import first_token_ids, generation_prefix
from alignment_dagster.backends.identity import content_hash


@pytest.fixture(scope="module")
def backend():
    return make_backend(BackendSpec(batch_size=4))


CONVS = [
    [{"role": "user", "content": "Is red a colour? Answer A for yes or B for no."}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Which is larger, A: 3 or B: 7? Answer A or B."},
    ],
    [
        {
            "role": "user",
            "content": "Pick A or B. " + "This prompt is deliberately much longer than the others. " * 6,
        }
    ],
]


def test_generation_returns_text(backend) -> None:
    out = backend.generate(CONVS[:2], n=2, sampling=Sampling(max_new_tokens=12, temperature=0.8))
    assert [len(o) for o in out] == [2, 2]
    assert all(isinstance(t, str) and t.strip() for o in out for t in o)
    greedy = backend.generate(CONVS[:1], n=1, sampling=Sampling(max_new_tokens=12, temperature=0.0))
    assert greedy == backend.generate(CONVS[:1], n=1, sampling=Sampling(max_new_tokens=12, temperature=0.0))
    assert backend.stats.generated_tokens > 0 and backend.identity.startswith(
        "transformers:smollm2-135m-instruct@"
    )


def test_choice_probabilities_match_direct_logits(backend) -> None:
    probs = backend.choice_probabilities(CONVS, ["A", "B"])  # one padded batch
    ids = first_token_ids(backend.tokenizer, ["A", "B"], generation_prefix(backend.tokenizer))
    for conv, p in zip(CONVS, probs, strict=True):
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


def test_batched_scoring_equals_one_at_a_time(backend) -> None:
    batched = backend.choice_probabilities(CONVS, ["A", "B"])  # rows of very different lengths, left-padded
    calls = backend.stats.scoring_calls
    alone = [backend.choice_probabilities([c], ["A", "B"])[0] for c in CONVS]
    assert backend.stats.scoring_calls == calls + len(CONVS)  # one forward pass per call, nothing generated
    for b, a in zip(batched, alone, strict=True):
        assert b["A"] == pytest.approx(a["A"], abs=1e-5)


def test_n_samples_and_counters(backend) -> None:
    before = backend.stats.as_dict()
    out = backend.generate(CONVS, n=3, sampling=Sampling(max_new_tokens=6, temperature=1.0, seed=1))
    after = backend.stats.as_dict()
    assert [len(o) for o in out] == [3, 3, 3]
    assert after["generated_sequences"] - before["generated_sequences"] == 9
    assert after["generate_calls"] - before["generate_calls"] == 1  # batch_size 4: one batched call
    assert 0 < after["generated_tokens"] - before["generated_tokens"] <= 9 * 6


def test_choice_first_token_is_read_after_the_generation_prompt(backend) -> None:
    prefix = generation_prefix(backend.tokenizer)
    assert prefix.endswith("assistant\n")
    # A multi-token choice is scored by its first token, as the model would emit it after the prompt.
    yes, no = first_token_ids(backend.tokenizer, ["Yes!", "No"], prefix)
    assert backend.tokenizer.convert_ids_to_tokens(yes) == "Yes"
    probs = backend.choice_probabilities(CONVS[:1], ["Yes!", "No"])[0]
    assert set(probs) == {"Yes!", "No"} and sum(probs.values()) == pytest.approx(1.0)


def test_identity_hashes_weight_content(tmp_path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    first = content_hash(folder)
    (folder / "model.safetensors").write_bytes(b"\x00" * 63 + b"\x01")  # same size, one weight changed
    second = content_hash(folder)
    assert second != first
    (folder / "checkpoint-1").mkdir()  # training leftovers are not what from_pretrained loads
    (folder / "checkpoint-1" / "model.safetensors").write_bytes(b"x")
    assert content_hash(folder) == second
    # The pipeline's card is not loaded either: a model kept by the retrain policy keeps its identity.
    (folder / "alignment.json").write_text('{"stale": true}')
    assert content_hash(folder) == second
