"""In-process vLLM (`vllm.LLM`) for GPU batch jobs: `pip install alignment-dagster[vllm]`.

vLLM spawns worker processes, so scripts that build this backend need an `if __name__ == "__main__":`
guard. On CPU-only machines prefer `vllm serve` in its own venv and the `openai` backend.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from alignment_dagster.backends.base import Backend, BackendSpec, Conversation, Sampling, item_seed
from alignment_dagster.backends.choices import (
    first_token_ids,
    generation_prefix,
    renormalise,
    restrict_top_logprobs,
)
from alignment_dagster.backends.identity import model_identity


class VLLMBackend(Backend):
    def __init__(self, spec: BackendSpec, **llm_kwargs):
        super().__init__()
        from vllm import LLM

        model, self._identity = model_identity("vllm", spec.model)
        self.spec = spec
        self.llm = LLM(model=model, dtype=spec.dtype, **llm_kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self._prefix = generation_prefix(self.tokenizer)

    @property
    def identity(self) -> str:
        return self._identity

    def choice_probabilities(
        self, conversations: Sequence[Conversation], choices: Sequence[str]
    ) -> list[dict[str, float]]:
        from vllm import SamplingParams

        t0 = time.perf_counter()
        ids = first_token_ids(self.tokenizer, choices, self._prefix)
        if "logprob_token_ids" in getattr(SamplingParams, "__struct_fields__", ()):
            # vLLM >= 0.32: the choices' exact log-probabilities, whatever their rank.
            params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=ids)
        else:
            params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=self.spec.top_logprobs)
        outputs = self.llm.chat([list(c) for c in conversations], params, use_tqdm=len(conversations) > 16)
        result = []
        for out in outputs:
            # token id -> Logprob at the first generated position: the asked ids (or the top-k), plus the
            # sampled token.
            top = {tid: lp.logprob for tid, lp in out.outputs[0].logprobs[0].items()}
            logps, missing = restrict_top_logprobs(top, ids)
            self.stats.missing_choices += missing
            result.append(dict(zip(choices, renormalise(logps), strict=False)))
            self.stats.prompt_tokens += len(out.prompt_token_ids or [])
        self.stats.scoring_calls += 1
        self.stats.scored_prompts += len(conversations)
        self.stats.seconds += time.perf_counter() - t0
        return result

    def generate(
        self, conversations: Sequence[Conversation], n: int = 1, sampling: Sampling | None = None
    ) -> list[list[str]]:
        from vllm import SamplingParams

        sampling = sampling or Sampling()
        t0 = time.perf_counter()
        params = [
            SamplingParams(
                n=n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens,
                seed=item_seed(sampling.seed, c),
            )
            for c in conversations
        ]
        outputs = self.llm.chat([list(c) for c in conversations], params, use_tqdm=len(conversations) > 16)
        result = [[o.text.strip() for o in out.outputs] for out in outputs]
        for out in outputs:
            self.stats.prompt_tokens += len(out.prompt_token_ids or [])
            self.stats.generated_tokens += sum(len(o.token_ids) for o in out.outputs)
        self.stats.generate_calls += 1
        self.stats.generated_sequences += len(conversations) * n
        self.stats.seconds += time.perf_counter() - t0
        return result
