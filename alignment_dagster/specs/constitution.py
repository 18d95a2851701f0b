"""Constitutions: versioned YAML files of weighted principles, validated and content-hashed.

A constitution's partition key is `<name>-<sha8>`, where sha8 is the first 8 hex digits of the
SHA-256 of its canonical content (the validated model as sorted JSON), so reformatting or
re-commenting a file keeps its version while any change of meaning makes a new one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import BaseModel, Field, field_validator, model_validator

from alignment_dagster.core.keys import (
    canonical_json,
    check_identifier,
    checked_slug,
    is_blank,
    sha256_hex,
    slugify,
    validate_key,
)
from alignment_dagster.core.reporting import StageReport, markdown_table
from alignment_dagster.core.yaml_files import (
    SPEC_CONFIG,
    SpecError,
    SpecVersion,
    parse_yaml_model,
    read_spec_file,
)

# Finite is not enough: a weight of 1e308 sums to inf and makes the aggregate nan, one of 1e-320 underflows
# to 0. Weights are relative, so six orders of magnitude either way is room enough.
MIN_WEIGHT, MAX_WEIGHT = 1e-6, 1e6
MAX_COUNT = 1_000_000  # budgets and sample sizes

REGISTRY_VERSION = re.compile(r"models:/[^/@]+/[0-9]+")


class ConstitutionError(SpecError):
    """A constitution file that cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = SPEC_CONFIG


def _categories(v: list[str]) -> list[str]:
    """Prompt categories as the prompt pool stores them (slugified), so `Red Team` matches `red-team`; a
    lookalike (`rеd-team` with a Cyrillic 'е') is refused rather than slugged into another category."""
    return [checked_slug(c, "category") for c in v]


def _one_line(v: str | None) -> str | None:
    """Whitespace runs collapsed, as principle texts are; None or blank stays None."""
    if v is None:
        return None
    v = " ".join(v.split())
    if not v:
        raise ValueError("must not be empty (leave the key out instead)")
    return v


class Demonstration(_Strict):
    """One worked example the model sees before its own critique and revision (few-shot). A demonstration
    whose revision equals its reply shows that a reply already fine is left as it is."""

    prompt: str = Field(description="The user's message.")
    reply: str = Field(description="The assistant's reply that is critiqued.")
    critique: str = Field(description="The critique of the reply under the request.")
    revision: str = Field(description="The revised reply; equal to `reply` when nothing needs to change.")
    critique_request: str | None = Field(
        None, description="The request this critique answers; default: the principle's own."
    )
    revision_request: str | None = Field(
        None, description="The request this revision answers; default: the principle's own."
    )

    @field_validator("prompt", "reply", "critique", "revision")
    @classmethod
    def _stripped(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("must not be empty")
        return v

    @field_validator("critique_request", "revision_request")
    @classmethod
    def _request(cls, v: str | None) -> str | None:
        return _one_line(v)

    @property
    def unchanged(self) -> bool:
        return " ".join(self.revision.split()) == " ".join(self.reply.split())


class Principle(_Strict):
    id: str = Field(description="Stable identifier, unique within the constitution ([a-z0-9_-], 1-64).")
    text: str = Field(description="The principle as the judge reads it.")
    weight: float = Field(1.0, description=f"Vote weight in the aggregate, {MIN_WEIGHT:g} to {MAX_WEIGHT:g}.")
    applies_to: list[str] | None = Field(
        None,
        description="Prompt categories this principle judges, slugified like the prompts' (`Red Team` is "
        "`red-team`); None means all categories.",
    )

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return check_identifier(v, "principle id")

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        v = " ".join(v.split())
        if is_blank(v):
            raise ValueError("must not be empty")
        return v

    @field_validator("weight")
    @classmethod
    def _weight(cls, v: float) -> float:
        if not v > 0:
            raise ValueError("must be > 0")
        if not MIN_WEIGHT <= v <= MAX_WEIGHT:
            raise ValueError(f"must be between {MIN_WEIGHT:g} and {MAX_WEIGHT:g}")
        return float(v)

    @field_validator("applies_to")
    @classmethod
    def _applies_to(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        if not v:
            raise ValueError(
                "an empty list means the principle never applies; omit applies_to to apply it to "
                "every category"
            )
        return _categories(v)

    # Constitutional AI phase 1 (`revisions`): a principle with both requests critiques and revises replies.
    critique_request: str | None = Field(
        None, description="Asks the model to critique a reply under this principle (phase 1, `revisions`)."
    )
    revision_request: str | None = Field(
        None, description="Asks the model to rewrite the reply so the critique no longer applies."
    )
    role: Literal["harmless", "helpful", "honest"] | None = Field(
        None,
        description="What the principle guards. A revision must not make the reply worse under any `helpful` "
        "principle (the revision gate).",
    )
    allows_refusal: bool = Field(
        False, description="A revision under this principle may turn a reply into a refusal."
    )
    demonstrations: list[Demonstration] = Field(
        default_factory=list,
        description="Few-shot demonstrations for this principle's critiques and revisions; default: the "
        "constitution's `revision.demonstrations`.",
    )

    @field_validator("critique_request", "revision_request")
    @classmethod
    def _request(cls, v: str | None) -> str | None:
        return _one_line(v)

    @model_validator(mode="after")
    def _paired_requests(self) -> Principle:
        if (self.critique_request is None) != (self.revision_request is None):
            raise ValueError(
                "critique_request and revision_request come as a pair (the model critiques, then revises); "
                "give both or neither"
            )
        if self.demonstrations and not self.revises:
            raise ValueError("demonstrations need critique_request and revision_request")
        return self

    @property
    def revises(self) -> bool:
        """Whether phase 1 can draw this principle: it has a critique and a revision request."""
        return self.critique_request is not None


# New principle fields, left out of the content hash at these defaults so earlier versions keep their keys.
PHASE_ONE_DEFAULTS = {
    "critique_request": None,
    "revision_request": None,
    "role": None,
    "allows_refusal": False,
    "demonstrations": [],
}


class RevisionSettings(_Strict):
    """Constitutional AI phase 1: critique and revision chains and the gate each revision must pass
    (used by `revisions` and `sft_dataset`)."""

    rounds: int = Field(2, ge=1, le=8, description="Most critique -> revision rounds per prompt (K).")
    min_gain: float = Field(
        0.05,
        ge=0.0,
        lt=0.5,
        description="gain = P(revision better under the drawn principle) - 0.5, both orders; a revision "
        "gaining less is not accepted, and its chain stops.",
    )
    helpful_tolerance: float = Field(
        0.05,
        ge=0.0,
        le=0.5,
        description="Under a `helpful` principle, P(revision better) may not fall below 0.5 - this.",
    )
    max_length_ratio: float = Field(
        2.0, gt=1.0, description="A revision longer than this times the reply it replaces is refused."
    )
    min_length_ratio: float = Field(0.25, gt=0.0, le=1.0, description="... or shorter than this times it.")
    audit_fraction: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Share of accepted revisions humans are asked about (original or revision?), drawn by "
        "hash; the judge signal gate (`judge.gate`) is applied to their answers.",
    )
    demonstrations: list[Demonstration] = Field(
        default_factory=list,
        description="Few-shot demonstrations for every principle without its own; include one whose reply "
        "stays unchanged.",
    )


class GateSettings(_Strict):
    """The judge signal gate: is judge-human agreement significantly above chance? (`judge.gate`)"""

    alpha: float = Field(0.05, gt=0.0, lt=1.0, description="One-sided binomial test level.")
    min_n: int = Field(
        30, ge=1, le=MAX_COUNT, description="Fewer judge-human comparisons than this: undecided."
    )
    override: str | None = Field(
        None,
        description="Use AI labels of this version even though the gate failed; the reason is recorded in "
        "MLflow. Leave empty unless you mean it.",
    )


class LengthBiasSettings(_Strict):
    """The length_bias check (`judge.length_bias`): does the judge pick the longer reply more often than the
    humans do on the same pairs (audit slice and known labels)?"""

    max_excess: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Fail when the judge's longer-reply rate exceeds the humans' by more than this and the "
        "excess is significant.",
    )
    alpha: float = Field(0.05, gt=0.0, lt=1.0, description="One-sided exact McNemar test level.")
    min_n: int = Field(
        30, ge=1, description="Fewer counted pairs than this: undecided (a WARN, never a block)."
    )
    near_equal_fraction: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Lengths within this share of the longer reply (or near_equal_tokens) are near-equal: "
        "left out and counted.",
    )
    near_equal_tokens: int = Field(3, ge=0, description="Lengths within this many tokens are near-equal.")
    severity: Literal["warn", "error"] = Field("warn", description="Severity of a failed check in Dagster.")
    block_ai_labels: bool = Field(
        False,
        description="A failed check refuses AI-sourced blends of this version, like a failed signal gate "
        "(`judge.gate.override` or a blend's `judge_gate_override` lifts both).",
    )


class JudgeSettings(_Strict):
    """How the AI judge turns principle votes into a label (used by `ai_preferences`).

    confidence = |2 * p_a - 1| of the weighted, position-debiased aggregate (0: a coin flip, 1: certain).
    """

    min_confidence: float = Field(0.2, ge=0.0, le=1.0, description="Abstain below this confidence.")
    min_vote_share: float = Field(
        0.5, ge=0.0, le=1.0, description="Abstain when the winning side holds less of the principle weight."
    )
    min_consistent_fraction: float = Field(
        0.5, ge=0.0, le=1.0, description="Abstain when fewer principles than this are order-consistent."
    )
    template: str = Field(
        "pairwise-v1",
        description="Judge prompt template id from the registry "
        "(`pairwise-cot-v1`: chain of thought, a rationale first, stored for audit).",
    )
    ensemble_templates: list[str] = Field(
        default_factory=list,
        description="More template ids judged by the same model; with them the pair label "
        "follows `ensemble_agreement` across all templates, and disagreement abstains.",
    )
    ensemble_agreement: Literal["all", "majority"] = Field(
        "all", description="With several judges: label only when all (or a majority) agree."
    )
    preference_model: str | None = Field(
        None,
        description="A reward model as a judge: a local folder, a folder in pipeline storage (e.g. "
        "`reward_model/<constitution>/<blend>/model`) or `models:/<name>/<version>` from the MLflow registry "
        "(the iterative loop: round k+1 judged by round k's reward model). It joins the LLM templates in the "
        "ensemble.",
    )
    preference_model_temperature: float = Field(
        1.0,
        ge=1e-3,
        le=1e3,
        description="p_a = sigmoid((r_a - r_b) / temperature); >1 softens an over-confident model.",
    )
    use_llm_judge: bool = Field(True, description="False: the preference model judges alone.")

    @model_validator(mode="after")
    def _some_judge(self) -> JudgeSettings:
        if not self.use_llm_judge and not self.preference_model:
            raise ValueError("use_llm_judge is false and no preference_model is set: nothing would judge")
        return self

    @field_validator("preference_model")
    @classmethod
    def _pinned_registry_version(cls, v: str | None) -> str | None:
        # An alias (`models:/name@champion`) or `latest` can move to other weights under the same string;
        # a pinned version keeps the judge's identity, and so its cache key, in the constitution's text.
        if v and v.startswith("models:/") and not REGISTRY_VERSION.fullmatch(v):
            raise ValueError(
                f"{v!r}: pin a registered model by version, as models:/<name>/<version number>; "
                "aliases and stages are refused because the judge they name can change"
            )
        return v

    @field_validator("template")
    @classmethod
    def _known_template(cls, v: str) -> str:
        from alignment_dagster.judge.templates import TEMPLATES

        if v not in TEMPLATES:
            raise ValueError(f"unknown judge template {v!r}; known: {', '.join(sorted(TEMPLATES))}")
        return v

    @field_validator("ensemble_templates")
    @classmethod
    def _known_templates(cls, v: list[str]) -> list[str]:
        for t in v:
            cls._known_template(t)
        if len(set(v)) != len(v):
            raise ValueError("duplicate template ids")
        return v

    gate: GateSettings = Field(default_factory=GateSettings, description="Judge signal gate.")
    length_bias: LengthBiasSettings = Field(
        default_factory=LengthBiasSettings, description="Judge length-bias check."
    )


class RoutingSettings(_Strict):
    """Where human attention goes (used by `edge_cases`)."""

    human_budget: int = Field(
        100, ge=0, le=MAX_COUNT, description="Most pairs sent to humans per constitution version."
    )
    audit_fraction: float = Field(0.05, ge=0.0, le=1.0, description="Random audit slice of labelled pairs.")
    always_human: list[str] = Field(
        default_factory=list, description="Prompt categories always routed (slugified)."
    )

    @field_validator("always_human")
    @classmethod
    def _always_human(cls, v: list[str]) -> list[str]:
        return _categories(v)


class Constitution(_Strict):
    name: str = Field(description="Human name; its slug starts the partition key.")
    description: str | None = None
    principles: list[Principle]
    judge: JudgeSettings = Field(default_factory=JudgeSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    revision: RevisionSettings = Field(default_factory=RevisionSettings)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        v = v.strip()
        if not slugify(v):
            raise ValueError("must contain at least one letter or digit")
        checked_slug(v, "name")
        return v

    @field_validator("principles")
    @classmethod
    def _principles(cls, v: list[Principle]) -> list[Principle]:
        if not v:
            raise ValueError("must list at least one principle")
        seen: set[str] = set()
        for p in v:
            if p.id in seen:
                raise ValueError(f"duplicate principle id {p.id!r}")
            seen.add(p.id)
        return v

    @model_validator(mode="after")
    def _key_fits(self) -> Constitution:
        # The slug is bounded so that `<slug>-<sha8>` always passes validate_key.
        if len(slugify(self.name)) > 100:
            raise ValueError("name is too long (slug over 100 characters)")
        return self

    @model_validator(mode="after")
    def _demonstrations(self) -> Constitution:
        # A small model shown only changed replies learns that every reply must change.
        for p in self.revising_principles():
            demos = self.demonstrations_for(p)
            if not demos:
                raise ValueError(
                    f"principle {p.id!r} has critique and revision requests but no demonstrations: give it "
                    "`demonstrations` or set `revision.demonstrations`"
                )
            if not any(d.unchanged for d in demos):
                raise ValueError(
                    f"the demonstrations for principle {p.id!r} need one whose reply is already fine and "
                    "stays unchanged (revision equal to reply)"
                )
        return self

    def revising_principles(self) -> list[Principle]:
        return [p for p in self.principles if p.revises]

    def demonstrations_for(self, principle: Principle) -> list[Demonstration]:
        return list(principle.demonstrations or self.revision.demonstrations)

    def canonical(self) -> str:
        data = self.model_dump(mode="json")
        # Added after the first versions: left out at its defaults so those versions keep their keys.
        if self.judge.gate == GateSettings():
            data["judge"].pop("gate")
        if self.judge.length_bias == LengthBiasSettings():
            data["judge"].pop("length_bias")
        if self.revision == RevisionSettings():
            data.pop("revision")
        for principle in data["principles"]:
            for key, default in PHASE_ONE_DEFAULTS.items():
                if principle[key] == default:
                    principle.pop(key)
        for key, default in [
            ("ensemble_templates", []),
            ("preference_model", None),
            ("preference_model_temperature", 1.0),
            ("use_llm_judge", True),
        ]:
            if data["judge"][key] == default:
                data["judge"].pop(key)
        return canonical_json(data)

    @property
    def content_hash(self) -> str:
        return sha256_hex(self.canonical())

    @property
    def partition_key(self) -> str:
        return validate_key(f"{slugify(self.name)}-{self.content_hash[:8]}", "constitution partition key")

    def principle_weights(self) -> dict[str, float]:
        return {p.id: p.weight for p in self.principles}

    def changes_from(self, before: Constitution) -> list[str]:
        """What a reader of the two files would call the changes: principles added, removed or reworded,
        weights and categories changed, judge and routing settings changed (with the old and new values)."""
        old, new = {p.id: p for p in before.principles}, {p.id: p for p in self.principles}
        changes = [f"added {pid}" for pid in new if pid not in old]
        changes += [f"removed {pid}" for pid in old if pid not in new]
        for pid in (pid for pid in new if pid in old):
            a, b = old[pid], new[pid]
            changes += [f"reworded {pid}"] if a.text != b.text else []
            changes += [f"{pid} weight {a.weight:g} -> {b.weight:g}"] if a.weight != b.weight else []
            changes += (
                [f"{pid} applies_to {a.applies_to} -> {b.applies_to}"] if a.applies_to != b.applies_to else []
            )
            changes += _phase_one_changes(pid, a, b)
        for section in ("judge", "routing", "revision"):
            a, b = getattr(before, section).model_dump(), getattr(self, section).model_dump()
            changes += [
                f"{section}.{k} changed" if k == "demonstrations" else f"{section}.{k} {a[k]} -> {b[k]}"
                for k in b
                if a.get(k) != b[k]
            ]
        return changes


def _phase_one_changes(pid: str, a: Principle, b: Principle) -> list[str]:
    """A principle's phase-1 fields that changed, as the comparison lists them."""
    changes = [
        f"reworded {pid}.{k}"
        for k in ("critique_request", "revision_request")
        if getattr(a, k) != getattr(b, k)
    ]
    changes += [
        f"{pid} {k} {getattr(a, k)} -> {getattr(b, k)}"
        for k in ("role", "allows_refusal")
        if getattr(a, k) != getattr(b, k)
    ]
    return changes + ([f"{pid} demonstrations changed"] if a.demonstrations != b.demonstrations else [])


class ConstitutionVersion(SpecVersion):
    """One constitution version as the `constitution` asset stores it (`.spec`: the validated spec)."""

    spec: Constitution = Field(alias="constitution")

    def report(self) -> StageReport:
        spec = self.spec
        principles = pd.DataFrame(
            [
                {
                    "id": p.id,
                    "weight": p.weight,
                    "applies_to": ", ".join(p.applies_to or ["all"]),
                    "text": p.text,
                }
                for p in spec.principles
            ]
        )
        report = StageReport(tags={"constitution.hash": self.content_hash, "constitution.name": spec.name})
        report.add(
            name=spec.name,
            content_hash=self.content_hash,
            source=self.source,
            n_principles=len(spec.principles),
            total_weight=sum(spec.principle_weights().values()),
        )
        report.params.update(
            {
                "constitution.name": spec.name,
                "constitution.hash": self.content_hash,
                "constitution.source": self.source,
                "judge": spec.judge.model_dump(),
                "routing": spec.routing.model_dump(),
                "principle_weights": spec.principle_weights(),
            }
        )
        report.detail("judge_settings", spec.judge.model_dump()).detail(
            "routing_settings", spec.routing.model_dump()
        )
        report.add(n_revising_principles=len(spec.revising_principles()))
        report.notes["principles"] = markdown_table(principles, max_rows=50, max_chars=120)
        return report.text("constitution.yaml", self.yaml)


def parse_constitution(raw: bytes | str, source: str) -> Constitution:
    """Validate a constitution from YAML text. `source` names the file in every error."""
    return parse_yaml_model(raw, source, Constitution, ConstitutionError)


def load_constitution(path: str | Path) -> Constitution:
    return parse_constitution(read_spec_file(path, ConstitutionError), str(path))
