"""A trained policy through the transformers backend: LoRA adapters merged in memory, full fine-tunes, and
identities that keep base and policy outputs apart in every cache."""

import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from alignment_dagster.backends import BackendSpec, make_backend
from alignment_dagster.backends.choices import first_token_ids, generation_prefix

CONVS = [
    [{"role": "user", "content": "Is red a colour? Answer A for yes or B for no."}],
    [{"role": "user", "content": "Which is larger, A: 3 or B: 7? Answer A or B."}],
]


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, smollm2_path: Path) -> Path:
    """A LoRA adapter with random (non-zero) B matrices, so it really changes the model's outputs."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32)
    cfg = LoraConfig(
        task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    peft_model = get_peft_model(base, cfg)
    out = tmp_path_factory.mktemp("adapter") / "policy"
    peft_model.save_pretrained(out, safe_serialization=True)
    return out


def _direct_probs(model, tokenizer, conv) -> tuple[float, float]:
    text = tokenizer.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        logits = model(**enc).logits[0, -1].float()
    ids = first_token_ids(tokenizer, ["A", "B"], generation_prefix(tokenizer))
    p = torch.softmax(logits[ids], dim=-1)
    return float(p[0]), float(p[1])


def test_lora_adapter_is_merged_and_named(lora_dir: Path, smollm2_path: Path) -> None:
    from peft import PeftModel

    spec = BackendSpec(batch_size=2)
    base = make_backend(spec)
    policy = make_backend(spec.model_copy(update={"adapter": str(lora_dir)}))
    assert policy.identity.startswith(base.identity + "+lora@")

    # Reference: the unmerged PeftModel on the same base computes what the merged backend must give.
    ref = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32), str(lora_dir)
    ).eval()
    got = policy.choice_probabilities(CONVS, ["A", "B"])
    base_got = base.choice_probabilities(CONVS, ["A", "B"])
    moved = 0.0
    for conv, p, b in zip(CONVS, got, base_got, strict=True):
        a_ref, b_ref = _direct_probs(ref, policy.tokenizer, conv)
        assert p["A"] == pytest.approx(a_ref, abs=1e-4) and p["B"] == pytest.approx(b_ref, abs=1e-4)
        moved = max(moved, abs(p["A"] - b["A"]))
    assert moved > 1e-3, "the adapter did not change the model's outputs"


def test_identity_follows_adapter_content_not_path(lora_dir: Path, tmp_path: Path) -> None:
    from alignment_dagster.backends.adapter import adapter_identity

    copy = tmp_path / "elsewhere"
    shutil.copytree(lora_dir, copy)
    assert adapter_identity("base", str(copy)) == adapter_identity("base", str(lora_dir))
    from safetensors.torch import load_file, save_file

    weights = load_file(copy / "adapter_model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 0.01
    save_file(weights, copy / "adapter_model.safetensors")
    assert adapter_identity("base", str(copy)) != adapter_identity("base", str(lora_dir))


def test_full_fine_tune_folder_replaces_the_base(tmp_path: Path, smollm2_path: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)  # tied to the embeddings: every logit changes
    out = tmp_path / "full"
    model.save_pretrained(out, safe_serialization=True)
    policy = make_backend(BackendSpec(batch_size=2, adapter=str(out)))
    assert "+full@" in policy.identity
    got = policy.choice_probabilities(CONVS[:1], ["A", "B"])[0]
    a_ref, _ = _direct_probs(model.eval(), policy.tokenizer, CONVS[0])
    assert got["A"] == pytest.approx(a_ref, abs=1e-4)


def test_bad_adapter_folders_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_backend(BackendSpec(adapter=str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither a PEFT adapter"):
        make_backend(BackendSpec(adapter=str(tmp_path / "empty")))
    with pytest.raises(ValueError, match="transformers backend only"):
        make_backend(BackendSpec(kind="openai", base_url="http://127.0.0.1:1/v1", adapter=str(tmp_path)))
