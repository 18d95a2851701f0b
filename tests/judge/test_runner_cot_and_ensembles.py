"""Chain-of-thought judging and template ensembles on the real SmolLM2, and their checks and settings."""

from pathlib import Path

import pandas as pd
import pytest

from alignment_dagster.backends import BackendSpec, make_backend
from alignment_dagster.core.storage import LocalStorage
from alignment_dagster.judge.aggregate import combine_judges
from alignment_dagster.judge.cache import JudgmentCache, RationaleCache
from alignment_dagster.judge.quality import QualityThresholds, judge_quality
from alignment_dagster.judge.runner import judge_ensemble, judge_pairs
from alignment_dagster.judge.templates import get_template
from alignment_dagster.specs.constitution import ConstitutionError, parse_constitution

TWO = """
name: two
principles:
  - {id: harm, text: Choose the less harmful reply.}
  - {id: honest, text: Choose the more honest reply.}
"""
PAIRS = pd.DataFrame(
    {
        "pair_id": ["bread", "sum"],
        "prompt": ["Human: how do I bake bread?", "Human: what is 2+2?"],
        "response_a": ["Mix flour, water and yeast, knead, let it rise, then bake.", "5"],
        "response_b": ["No idea.", "4"],
    }
)


@pytest.fixture(scope="module")
def backend():
    return make_backend(BackendSpec(batch_size=8))


class Counting:
    """The real backend, counting what the judge asks of it."""

    def __init__(self, backend):
        self.backend, self.identity, self.generated, self.scored = backend, backend.identity, [], []

    def generate(self, conversations, n=1, sampling=None):
        self.generated.extend(conversations)
        return self.backend.generate(conversations, n=n, sampling=sampling)

    def choice_probabilities(self, conversations, choices):
        self.scored.extend(conversations)
        return self.backend.choice_probabilities(conversations, choices)


def test_chain_of_thought_scores_after_a_stored_rationale(backend, tmp_path: Path) -> None:
    c, template = parse_constitution(TWO, "two.yaml"), get_template("pairwise-cot-v1")
    store = LocalStorage(tmp_path)
    first = Counting(backend)
    result = judge_pairs(
        PAIRS, c, first, template, JudgmentCache(store, backend.identity, template.version), progress=False
    )
    # 2 pairs x 2 principles x 2 orders: one rationale and one scoring prompt each.
    assert result.stats.rationale_calls == 8 and result.stats.model_calls == 8 and len(first.generated) == 8
    for scored in first.scored:  # prompt, the model's own rationale, then the follow-up question
        assert [m["role"] for m in scored] == ["system", "user", "assistant", "user"]
        assert scored[-1]["content"] == template.followup
    rationales = pd.concat([result.principles["rationale_forward"], result.principles["rationale_backward"]])
    assert rationales.notna().all() and (rationales.str.len() > 0).all()
    assert {m[2]["content"] for m in first.scored} == set(rationales.str.strip())
    assert len(RationaleCache(store, backend.identity, template.version)) == 8

    again = Counting(backend)  # from storage: no rationale generated, nothing scored, rationales still there
    rerun = judge_pairs(
        PAIRS, c, again, template, JudgmentCache(store, backend.identity, template.version), progress=False
    )
    assert again.generated == [] and again.scored == [] and rerun.stats.cache_hits == 8
    pd.testing.assert_frame_equal(rerun.principles, result.principles)


def test_direct_templates_store_no_rationale_and_need_no_generate(backend) -> None:
    class ScoreOnly:
        identity = backend.identity

        def choice_probabilities(self, conversations, choices):
            return backend.choice_probabilities(conversations, choices)

    c = parse_constitution(TWO, "two.yaml")
    result = judge_pairs(PAIRS, c, ScoreOnly(), get_template("pairwise-v1"), progress=False)
    assert result.principles["rationale_forward"].isna().all() and result.stats.rationale_calls == 0
    with pytest.raises(TypeError, match="must generate"):
        judge_pairs(PAIRS, c, ScoreOnly(), get_template("pairwise-cot-v1"), progress=False)


def test_template_ensemble_combines_per_agreement(backend) -> None:
    templates = [get_template("pairwise-v1"), get_template("pairwise-plain-v1")]
    for agreement in ["all", "majority"]:
        c = parse_constitution(
            TWO + f"judge:\n  ensemble_agreement: {agreement}\n  ensemble_templates: [pairwise-plain-v1]\n",
            "two.yaml",
        )
        result = judge_ensemble(PAIRS, c, backend, templates, [None, None], progress=False)
        singles = [judge_pairs(PAIRS, c, backend, t, progress=False) for t in templates]
        pd.testing.assert_frame_equal(result.pairs, combine_judges([s.pairs for s in singles], agreement))
        assert sorted(result.principles["template_version"].unique()) == sorted(
            get_template(t).version for t in ("pairwise-v1", "pairwise-plain-v1")
        )
        assert len(result.principles) == 2 * len(singles[0].principles)
        assert result.stats.model_calls == sum(s.stats.model_calls for s in singles) == 16


def test_constitution_names_known_templates_only() -> None:
    with pytest.raises(ConstitutionError, match=r"two.yaml: judge.template: .*unknown judge template 'nope'"):
        parse_constitution(TWO + "judge:\n  template: nope\n", "two.yaml")
    with pytest.raises(ConstitutionError, match=r"judge.ensemble_templates: .*duplicate"):
        parse_constitution(
            TWO + "judge:\n  ensemble_templates: [pairwise-plain-v1, pairwise-plain-v1]\n", "two.yaml"
        )
    # No ensemble: the setting stays out of the content hash, so versions made before it keep their keys.
    assert (
        parse_constitution(TWO + "judge:\n  ensemble_templates: []\n", "two.yaml").partition_key
        == parse_constitution(TWO, "two.yaml").partition_key
    )


def test_cot_parse_failure_check() -> None:
    principles = pd.DataFrame(
        {
            "p_a_forward": [0.6, 0.4],
            "p_a_backward": [0.6, 0.4],
            "order_consistent": [True, True],
            "rationale_forward": ["Reply A is kinder, so A.", "Both are fine."],
            "rationale_backward": ["B explains more.", "I cannot tell."],
        }
    )
    pairs = pd.DataFrame({"label": ["A", "B"]})
    out = {c.name: c for c in judge_quality(principles, pairs, QualityThresholds())}
    assert out["cot_parse_failure_rate"].value == 0.5 and not out["cot_parse_failure_rate"].passed
    direct = principles.assign(rationale_forward=None, rationale_backward=None)
    out = {c.name: c for c in judge_quality(direct, pairs, QualityThresholds())}
    assert (
        out["cot_parse_failure_rate"].passed
        and out["cot_parse_failure_rate"].value != out["cot_parse_failure_rate"].value
    )
