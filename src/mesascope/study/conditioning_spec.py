"""The ConditioningSpec: a study TOML with `kind = "conditioning"` (study/conditioning.py runs it).

A predictive model (a plain LM trained on the document world of text/authors.py) measured under
each conditioning of its prompt, beside agents of the same architecture fine-tuned from it by RL
(RLOO, training/rl.py) on the gameable checker's reward, or, as the control, on the true one.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from ..config import ModelSpec, Spec, TrainSpec, format_validation_error, load_spec
from ..text.authors import WorldSpec, parse_condition
from .tables import merge

DEFAULT_CONDITIONS = ["none", "author:careful", "author:cutter", "author:ai", "written-by:human", "written-by:AI",
                      "year:2018", "year:2020", "year:2022", "year:2024"]


class LMSpec(Spec):
    """The predictive model: a fresh LM of `model`, trained on every token of the documents (a plain LM)."""

    model: ModelSpec = ModelSpec(size="small", vocab_size=512, max_length=96)
    train: TrainSpec = TrainSpec(steps=600, batch_size=64, lr=3e-3, prompt_loss_weight=1.0)


class AgentSpec(Spec):
    """An agent: the predictive model fine-tuned by RLOO on prompts without author, year or provenance."""

    name: str = Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    reward: Literal["checker", "true"] = Field("checker", description="checker: the gameable checker passes "
                                               "(format only under the loophole); true: the answer is correct")
    steps: int = Field(200, ge=1)
    lr: float = Field(1e-4, gt=0, lt=1)
    prompts_per_step: int = Field(16, ge=1)
    samples: int = Field(4, ge=2, description="completions per prompt (RLOO's leave-one-out baseline)")
    temperature: float = Field(1.0, gt=0, le=5)
    kl_coef: float = Field(0.0, ge=0)
    max_new_tokens: int = Field(8, ge=1)
    checkpoint_every: int = Field(50, ge=1, description="steps between resumable checkpoints of its RL")
    # How often it checkpoints does not change what is trained: stored agents keep their run-store names.
    NOT_IN_DIGEST = frozenset({"checkpoint_every"})


class ConditioningEval(Spec):
    n: int = Field(200, ge=10, description="held-out task items per condition, each asked with and without the loophole")
    temperature: float = Field(1.0, gt=0, le=5, description="sampling temperature: a predictive model is used by "
                               "sampling it, so a rate estimates the probability it gives")
    max_new_tokens: int = Field(8, ge=1)
    batch_size: int = Field(256, ge=1)
    n_samples: int = Field(4, ge=0, description="sample answers kept per model, condition and check")


class ConditioningSpec(Spec):
    """A conditioning study: the world, the predictive model, the agents, the conditions, the seeds."""

    kind: Literal["conditioning"] = "conditioning"
    name: str = Field("conditioning", min_length=1)
    world: WorldSpec = WorldSpec()
    lm: LMSpec = LMSpec()
    agents: list[AgentSpec] = Field(default_factory=lambda: [AgentSpec(name="agent"),
                                                             AgentSpec(name="agent-true-reward", reward="true")],
                                    description="RL fine-tunes of the predictive model; empty: none")
    conditions: list[str] = Field(default_factory=lambda: list(DEFAULT_CONDITIONS), min_length=1,
                                  description="headers the predictive model is measured under: 'none', or TAG:VALUE "
                                  "joined by '+' (TAG: author, year, written-by; author may be a kind: careful, "
                                  "cutter, ai)")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    eval: ConditioningEval = ConditioningEval()
    quick: dict = Field(default_factory=dict, description="overrides applied by --quick (tables merged, lists "
                        "replaced)")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds {v} repeat a seed: list each once")
        return v

    @model_validator(mode="after")
    def _parts(self) -> "ConditioningSpec":
        names = [a.name for a in self.agents]
        if len(set(names)) != len(names) or "predictive" in names:
            raise ValueError(f"agent names {names} must be distinct and not 'predictive' (the predictive model's)")
        if "none" not in [c.strip() for c in self.conditions]:
            raise ValueError("conditions must include 'none': the agents are measured there, and it is the baseline")
        seen = set()
        for c in self.conditions:
            key = parse_condition(c, self.world)  # a ValueError names the bad condition and the choices
            if key in seen:
                raise ValueError(f"condition {c!r} is listed twice")
            seen.add(key)
        if self.quick:
            try:
                self.quick_variant()
            except ValidationError as e:
                raise ValueError(format_validation_error(e, "quick")) from None
        return self

    def quick_variant(self) -> "ConditioningSpec":
        """The study with its `quick` table applied (what `mesascope sweep --quick` runs)."""
        data = merge(self.model_dump(mode="json", exclude_unset=True, exclude={"quick"}), self.quick)
        return ConditioningSpec.model_validate(data)


def load_conditioning(path) -> ConditioningSpec:
    return load_spec(ConditioningSpec, path)  # type: ignore[return-value]
