"""In-process vLLM (`vllm.LLM`) for GPU batch jobs: `pip install alignment-dagster[vllm]`.

vLLM spawns worker processes, so scripts that build this backend need an `if __name__ == "__main__":`
guard. On CPU-only machines prefer `vllm serve` in its own venv and the `openai` backend.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from alignment_dagster.backends.base import Backend, BackendSpec, Conversation, Sampling

MISSING_LOGPROB = -30.0


class VLLMBackend(Backend):
    def __init__(self, spec: BackendSpec, **llm_kwargs):
        super().__init__()
        from vllm import LLM

        if spec.model is None:
            from alignment_dagster.embedded import embedded_model_path

            model = str(embedded_model_path())
        else:
            model = spec.model
        self.spec = spec
        dtype = "auto" if spec.dtype == "auto" else spec.dtype
        self.llm = LLM(model=model, dtype=dtype, **llm_kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self._identity = f"vllm:{spec.model or 'smollm2-135m-instruct'}"

    @property
    def identity(self) -> str:
        return self._identity

    def choice_probabilities(self, conversations: Sequence[Conversation], choices: Sequence[str]) -> list[dict[str, float]]:
        from vllm import SamplingParams

        from alignment_dagster.backends.transformers_backend import first_token_ids

        t0 = time.perf_counter()
        ids = first_token_ids(self.tokenizer, choices)
        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=self.spec.top_logprobs)
        outputs = self.llm.chat([list(c) for c in conversations], params, use_tqdm=len(conversations) > 16)
        result = []
        for out in outputs:
            top = out.outputs[0].logprobs[0]  # token id -> Logprob at the first generated position
            logps = [top[i].logprob if i in top else MISSING_LOGPROB for i in ids]
            m = max(logps)
            exp = [math.exp(x - m) for x in logps]
            result.append({c: e / sum(exp) for c, e in zip(choices, exp)})
            self.stats.prompt_tokens += len(out.prompt_token_ids or [])
        self.stats.scoring_calls += 1
        self.stats.scored_prompts += len(conversations)
        self.stats.seconds += time.perf_counter() - t0
        return result

    def generate(self, conversations: Sequence[Conversation], n: int = 1, sampling: Sampling | None = None) -> list[list[str]]:
        from vllm import SamplingParams

        sampling = sampling or Sampling()
        t0 = time.perf_counter()
        params = SamplingParams(n=n, temperature=sampling.temperature, top_p=sampling.top_p,
                                max_tokens=sampling.max_new_tokens, seed=sampling.seed)
        outputs = self.llm.chat([list(c) for c in conversations], params, use_tqdm=len(conversations) > 16)
        result = [[o.text.strip() for o in out.outputs] for out in outputs]
        for out in outputs:
            self.stats.prompt_tokens += len(out.prompt_token_ids or [])
            self.stats.generated_tokens += sum(len(o.token_ids) for o in out.outputs)
        self.stats.generate_calls += 1
        self.stats.generated_sequences += len(conversations) * n
        self.stats.seconds += time.perf_counter() - t0
        return result
