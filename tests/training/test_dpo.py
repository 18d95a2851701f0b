"""DPO with LoRA on the real SmolLM2: the weighted loss is exact; training raises the reward margin."""

from pathlib import Path

import pandas as pd
import pytest
import torch

from alignment_dagster.training.dpo import DPOTrainingConfig, build_trainer, normalised_weights, train_dpo


def conv(text: str, role: str) -> list[dict]:
    return [{"role": role, "content": text}]


@pytest.fixture(scope="module")
def tiny_prefs() -> pd.DataFrame:
    rows = [
        ("How do I boil an egg?", "Put the egg in boiling water for nine minutes, then cool it.", "No."),
        ("What is 2 + 2?", "2 + 2 = 4.", "I refuse to do maths."),
        ("Name a primary colour.", "Red is a primary colour.", "Go away."),
        ("How do I say hello in French?", "You say 'bonjour'.", "Whatever."),
        ("What is the capital of France?", "Paris is the capital of France.", "I don't care."),
        ("Give me a synonym for happy.", "Joyful is a synonym for happy.", "No synonyms today."),
        ("How many legs does a spider have?", "A spider has eight legs.", "Not telling."),
        ("What colour is the sky on a clear day?", "It is blue.", "Stop asking."),
    ]
    return pd.DataFrame(
        {
            "prompt": [conv(p, "user") for p, _, _ in rows],
            "chosen": [conv(c, "assistant") for _, c, _ in rows],
            "rejected": [conv(r, "assistant") for _, _, r in rows],
            "weight": [1.0, 2.0] * 4,
        }
    )


def test_normalised_weights() -> None:
    assert normalised_weights(pd.Series([1.0, 3.0])) == [0.5, 1.5]
    assert normalised_weights(pd.Series([0.2, 0.2, 0.2])) == pytest.approx([1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="positive mean"):
        normalised_weights(pd.Series([0.0, 0.0]))


@pytest.mark.slow
def test_weighted_loss_is_exact(tiny_prefs: pd.DataFrame, smollm2_path: Path, tmp_path: Path) -> None:
    cfg = DPOTrainingConfig(max_steps=1, batch_size=2, max_length=128)
    trainer = build_trainer(tiny_prefs.head(2), str(smollm2_path), cfg, tmp_path)
    trainer.model.eval()
    examples = [trainer.train_dataset[i] for i in range(2)]
    collate = trainer.data_collator

    def loss(rows: list[dict], weights: list[float] | None) -> float:
        rows = [{k: v for k, v in r.items() if k != "weight"} for r in rows]
        if weights is not None:
            rows = [{**r, "weight": w} for r, w in zip(rows, weights, strict=True)]
        batch = {k: v.to(trainer.model.device) if hasattr(v, "to") else v for k, v in collate(rows).items()}
        with torch.no_grad():
            return float(trainer.compute_loss(trainer.model, batch))

    l_first = loss(examples[:1], None)
    l_second = loss(examples[1:], None)
    assert loss(examples, [1.0, 1.0]) == pytest.approx((l_first + l_second) / 2, abs=1e-4)
    assert loss(examples, [2.0, 0.0]) == pytest.approx(l_first, abs=1e-4)
    assert loss(examples, [0.5, 1.5]) == pytest.approx((0.5 * l_first + 1.5 * l_second) / 2, abs=1e-4)


def _margin(model, tok, df: pd.DataFrame) -> float:
    """Mean over pairs of log p(chosen) - log p(rejected) given the prompt (chat template)."""
    total = 0.0
    for r in df.itertuples(index=False):
        lp = []
        for reply in (r.chosen, r.rejected):
            prompt_ids = tok.apply_chat_template(
                list(r.prompt), add_generation_prompt=True, return_dict=False
            )
            full_ids = tok.apply_chat_template(list(r.prompt) + list(reply), return_dict=False)
            ids = torch.tensor([full_ids])
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, :-1].float()
            logp = torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0]
            lp.append(float(logp[len(prompt_ids) - 1 :].sum()))
        total += lp[0] - lp[1]
    return total / len(df)


@pytest.mark.slow
def test_dpo_raises_margin_and_resumes(tiny_prefs: pd.DataFrame, smollm2_path: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    base = AutoModelForCausalLM.from_pretrained(smollm2_path).eval()
    before = _margin(base, tok, tiny_prefs)

    from transformers import TrainerCallback

    class StepCounter(TrainerCallback):
        steps: list[int] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.steps.append(state.global_step)

    cfg = DPOTrainingConfig(
        max_steps=2, batch_size=4, max_length=128, learning_rate=1e-3, save_steps=2, beta=0.1, logging_steps=1
    )
    first = train_dpo(tiny_prefs, str(smollm2_path), cfg, tmp_path)
    assert first.resumed_from is None
    assert (tmp_path / "checkpoints" / "checkpoint-2").is_dir()
    # A second attempt with a longer budget resumes from the checkpoint instead of starting over.
    cfg.max_steps = 4
    counter = StepCounter()
    second = train_dpo(tiny_prefs, str(smollm2_path), cfg, tmp_path, callbacks=[counter])
    assert second.resumed_from and second.resumed_from.endswith("checkpoint-2")
    assert counter.steps == [3, 4]  # only the unfinished steps ran
    assert [h["step"] for h in second.log_history if "loss" in h] == [1, 2, 3, 4]
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins"} <= set(second.log_history[-2])

    files = {p.name for p in second.output_dir.iterdir()}
    assert "adapter_model.safetensors" in files and not any(
        f.endswith((".bin", ".pt", ".pkl")) for f in files
    )
    tuned = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(smollm2_path), second.output_dir
    ).eval()
    after = _margin(tuned, tok, tiny_prefs)
    print(f"chosen-vs-rejected log-prob margin on training pairs: before {before:.2f}, after {after:.2f}")
    assert after > before + 1.0


def test_long_prompts_keep_their_replies_or_are_left_out_and_reported(
    tiny_prefs: pd.DataFrame, smollm2_path: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignment_dagster.training.dpo import drop_long_prompts
    from alignment_dagster.training.policy_eval import reply_logprobs
    from alignment_dagster.training.stages import fit_policy

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    lengths = [
        len(
            tok(
                tok.apply_chat_template(list(p), add_generation_prompt=True, tokenize=False),
                add_special_tokens=False,
            )["input_ids"]
        )
        for p in tiny_prefs["prompt"]
    ]
    limit = sorted(lengths)[3]  # TRL keeps a prompt only when it is shorter than max_length
    # keep_end (the default) cuts the conversation's oldest tokens: every row keeps its replies.
    assert drop_long_prompts(tiny_prefs, str(smollm2_path), DPOTrainingConfig(max_length=limit)) == (
        tiny_prefs,
        0,
    )
    keep_start = DPOTrainingConfig(max_length=limit, truncation_mode="keep_start")
    kept, dropped = drop_long_prompts(tiny_prefs, str(smollm2_path), keep_start)
    assert dropped == sum(n >= limit for n in lengths) and len(kept) == sum(n < limit for n in lengths) >= 1
    assert list(kept["prompt"]) == [
        p for p, n in zip(tiny_prefs["prompt"], lengths, strict=True) if n < limit
    ]

    # The evaluation cuts the way training does. A row whose prompt alone fills max_length: keep_end still
    # scores its reply (after a shortened conversation), keep_start has nothing of it left.
    model = AutoModelForCausalLM.from_pretrained(smollm2_path).eval()
    row = max(range(len(lengths)), key=lengths.__getitem__)
    prompt, reply, full = [tiny_prefs["prompt"][row]], [tiny_prefs["chosen"][row]], lengths[row]
    assert reply_logprobs(model, tok, prompt, reply, max_length=full)[0] < 0
    assert reply_logprobs(model, tok, prompt, reply, max_length=full, truncation_mode="keep_start") == [0.0]

    # Every prompt too long under keep_start: TRL would empty the dataset and crash in its sampler; the
    # stage skips with the reason instead.
    data = tiny_prefs.assign(split="train", prompt_id=[f"p{i}" for i in range(len(tiny_prefs))])
    config = DPOTrainingConfig(max_length=min(lengths), truncation_mode="keep_start")
    out = fit_policy(data, config, str(smollm2_path), tmp_path, min_train_rows=2)
    assert out.card["trained"] is False and out.card["dropped_long_prompts"] == len(tiny_prefs)
    assert (
        f"leaving out {len(tiny_prefs)} whose prompt alone is {min(lengths)}+ tokens"
        in out.card["skip_reason"]
    )
    with pytest.raises(ValueError, match="raise max_length"):
        build_trainer(data, str(smollm2_path), config, tmp_path / "direct")
