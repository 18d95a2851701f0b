"""How well a DPO policy ranks held-out preference pairs: the sign of its implicit reward.

For a pair (x, y_c, y_r) the DPO implicit reward margin is
`beta * ((log pi(y_c|x) - log ref(y_c|x)) - (log pi(y_r|x) - log ref(y_r|x)))`; the pair counts as ranked
right when it is > 0. The reference is the base (a LoRA policy with its adapter disabled).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import pandas as pd
from tqdm.auto import tqdm


def reply_logprobs(
    model,
    tok,
    prompts: list,
    replies: list,
    max_length: int = 512,
    batch_size: int = 8,
    truncation_mode: str = "keep_end",
) -> list[float]:
    """Sum of log p(reply tokens | chat prompt) per row (reply = assistant messages after the prompt), on
    the sequence cut to `max_length` the way DPO training cuts it (`truncation_mode`, as in TRL)."""
    import torch

    seqs: list[tuple[list[int], int]] = []
    for prompt, reply in zip(prompts, replies, strict=True):
        p_ids = tok.apply_chat_template(list(prompt), add_generation_prompt=True, return_dict=False)
        full = tok.apply_chat_template(list(prompt) + list(reply), return_dict=False)
        # The same cut as training, so what is scored is what was trained: keep_end drops the oldest tokens
        # (the reply then starts that much earlier; at least one token of context stays for its first
        # logit), keep_start drops the end (a prompt that fills max_length leaves no reply tokens: 0.0).
        full = list(full)
        if truncation_mode == "keep_end":
            cut = max(0, len(full) - max_length)
            seqs.append((full[cut:], max(1, len(p_ids) - cut)))
        elif truncation_mode == "keep_start":
            seqs.append((full[:max_length], len(p_ids)))
        else:
            raise ValueError(f"truncation_mode must be 'keep_end' or 'keep_start', not {truncation_mode!r}")
    out: list[float] = []
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    for i in tqdm(range(0, len(seqs), batch_size), desc="reply logprobs", disable=len(seqs) <= batch_size):
        batch = seqs[i : i + batch_size]
        width = max(len(s) for s, _ in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for j, (s, _) in enumerate(batch):  # right padding: positions of real tokens are unchanged
            ids[j, : len(s)] = torch.tensor(s)
            mask[j, : len(s)] = 1
        ids, mask = ids.to(device), mask.to(device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        logp = torch.log_softmax(logits, -1).gather(2, ids[:, 1:, None])[..., 0]
        for j, (s, start) in enumerate(batch):
            out.append(float(logp[j, start - 1 : len(s) - 1].sum()))
    return out


@dataclass
class PreferenceEval:
    n: int
    accuracy: float  # share of pairs with implicit reward margin > 0
    mean_reward_margin: float
    mean_policy_logprob_margin: float  # log pi(y_c) - log pi(y_r), without the reference
    rows: pd.DataFrame  # pair_id, policy/reference logprobs, reward margin

    def metrics(self, prefix: str = "") -> dict[str, float]:
        return {
            f"{prefix}n": self.n,
            f"{prefix}accuracy": self.accuracy,
            f"{prefix}reward_margin": self.mean_reward_margin,
            f"{prefix}logprob_margin": self.mean_policy_logprob_margin,
        }


def implicit_reward_eval(
    peft_model,
    tok,
    df: pd.DataFrame,
    beta: float,
    max_length: int = 512,
    batch_size: int = 8,
    reference=None,
    truncation_mode: str = "keep_end",
) -> PreferenceEval:
    """Implicit-reward accuracy of a policy on preference rows. `peft_model` is a PeftModel (reference =
    its adapter disabled) unless `reference` (a separate model) is given, as for a full fine-tune."""
    prompts, chosen, rejected = list(df["prompt"]), list(df["chosen"]), list(df["rejected"])
    if not len(df):
        return PreferenceEval(0, float("nan"), float("nan"), float("nan"), pd.DataFrame())
    peft_model.eval()
    pol_c = reply_logprobs(peft_model, tok, prompts, chosen, max_length, batch_size, truncation_mode)
    pol_r = reply_logprobs(peft_model, tok, prompts, rejected, max_length, batch_size, truncation_mode)
    ref_model = reference if reference is not None else peft_model
    with peft_model.disable_adapter() if reference is None else nullcontext():
        ref_c = reply_logprobs(ref_model, tok, prompts, chosen, max_length, batch_size, truncation_mode)
        ref_r = reply_logprobs(ref_model, tok, prompts, rejected, max_length, batch_size, truncation_mode)
    rows = pd.DataFrame(
        {"policy_chosen": pol_c, "policy_rejected": pol_r, "ref_chosen": ref_c, "ref_rejected": ref_r}
    )
    if "pair_id" in df.columns:
        rows.insert(0, "pair_id", list(df["pair_id"]))
    rows["reward_margin"] = beta * (
        (rows.policy_chosen - rows.ref_chosen) - (rows.policy_rejected - rows.ref_rejected)
    )
    return PreferenceEval(
        n=len(rows),
        accuracy=float((rows.reward_margin > 0).mean()),
        mean_reward_margin=float(rows.reward_margin.mean()),
        mean_policy_logprob_margin=float((rows.policy_chosen - rows.policy_rejected).mean()),
        rows=rows,
    )
