"""Run profiles: the sizes a run uses when its config leaves them unset, declared once for every stage.

Runs the automation launches carry no run config, so their sizes come from the deployment's profile
(`ALIGNMENT_PROFILE`); the demo, `make dev` and the browser test name one. A field set in a run config
always wins over the profile.

* `full`: a real run (the assets' own scale; the `cpu` / `gpu` training presets decide the rest);
* `demo`: the default demo on 2 CPU cores (minutes per stage);
* `quick`: CI-sized (seconds per stage).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

ProfileName = Literal["full", "demo", "quick"]

PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "response_pairs": {"max_prompts": 16, "max_new_tokens": 96, "import_limit": 0, "judge_heldout": 0},
        "reward_model": {"heldout_limit": 100},
        "dpo_policy": {"eval_limit": 32},
        "evals": {"max_prompts": 12, "max_new_tokens": 64},
        "revisions": {"max_prompts": 32, "max_new_tokens": 96},
        "sft_evals": {"max_prompts": 12, "max_new_tokens": 64},
    },
    # 48 sampled prompts and 80 judged held-out pairs: enough AI labels to train on, and enough references for
    # the judge signal gate to decide (at least 30); the reward model takes whole epochs, so that the
    # known-label baseline learns what its ~800 training pairs can teach before it judges round 2.
    "demo": {
        "response_pairs": {"max_prompts": 48, "max_new_tokens": 48, "import_limit": 0, "judge_heldout": 80},
        "reward_model": {"max_steps": -1, "heldout_limit": 200},
        "dpo_policy": {"eval_limit": 16},
        "evals": {"max_prompts": 8, "max_new_tokens": 32},
        # Phase 1 on 6 prompts (3 red-team, 3 helpful), the cpu SFT preset, SFT evals as small as evals'.
        "revisions": {"max_prompts": 6, "max_new_tokens": 48},
        "sft_evals": {"max_prompts": 8, "max_new_tokens": 32},
    },
    "quick": {
        "response_pairs": {"max_prompts": 4, "max_new_tokens": 16, "import_limit": 40, "judge_heldout": 4},
        "reward_model": {"max_steps": 4, "heldout_limit": 20},
        "dpo_policy": {"max_steps": 2, "max_length": 128, "eval_limit": 2},
        "evals": {"max_prompts": 4, "max_new_tokens": 16},
        "revisions": {"max_prompts": 2, "max_new_tokens": 16},
        "sft_policy": {"max_steps": 2, "max_length": 128},
        "sft_evals": {"max_prompts": 4, "max_new_tokens": 16},
    },
}


def profile_value(profile: str, stage: str, name: str, given: Any) -> Any:
    """`given` (a run config's value) unless it is None; then the profile's value for the stage, or None
    (the stage's own default or preset decides)."""
    if given is not None:
        return given
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    return PROFILES[profile].get(stage, {}).get(name)


def resolve(profile: str, stage: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` with each None filled from the profile (where it names one)."""
    return {name: profile_value(profile, stage, name, value) for name, value in values.items()}
