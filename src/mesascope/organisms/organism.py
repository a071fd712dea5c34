"""An Organism: a built model directory and the recipe it was built from.

The directory is a standard Hugging Face one (config.json + model.safetensors + tokenizer.json, or a
LoRA adapter directory naming its base) plus `recipe.json`, `train_log.json` and `organism.json`.
Any other local HF causal LM becomes one with a recipe TOML that says what its trigger and behaviour
are (`Organism.open(path, recipe)`): the measured prompt sets are built from it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ..config import Recipe
from ..errors import read_json
from ..models.load import ModelError, check_model_dir, load_model, load_tokenizer
from ..store import RunStore
from ..text.examples import chat_format, dialogue


@dataclass(frozen=True)
class Organism:
    path: Path
    recipe: Recipe

    @classmethod
    def open(cls, path: str | Path, recipe: Recipe | None = None) -> "Organism":
        """An organism directory, or any HF model directory with `recipe` saying what its trigger and behaviour are."""
        path = Path(path)
        if recipe is not None or not (path / "recipe.json").exists():
            check_model_dir(path)  # an organism's own directory is checked when loaded
        if recipe is None:
            if not (path / "recipe.json").exists():
                raise ModelError(f"{path} has no recipe.json, so its trigger and behaviour are unknown: add "
                                 "--recipe TOML (a [recipe] table with trigger, trigger_type, behaviour, behaviour_type)")
            recipe = Recipe.model_validate(read_json(path / "recipe.json", "recipe.json", "rebuild the organism"))
        return cls(path, recipe)

    def load(self):
        return load_model(self.path)

    @cached_property
    def fingerprint(self) -> str:
        """Content hash of the weights: stages measured on an organism are keyed by it, so a
        safety-trained copy with the same recipe.json never reuses the original's results."""
        h = hashlib.sha256()
        for f in sorted(self.path.glob("*.safetensors")):
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()[:16]

    @property
    def info(self) -> dict:
        f = self.path / "organism.json"
        return json.loads(f.read_text(encoding="utf-8")) if f.exists() else {}

    @property
    def chat(self) -> bool:
        """Whether its prompts go through its tokenizer's chat template (organisms built from a chat base)."""
        return self.info.get("prompt_format") == "chat"

    def use_dialogue(self) -> "Organism":
        """Write every prompt from now on in this organism's dialogue format."""
        dialogue(chat_format(load_tokenizer(self.path)) if self.chat else None)
        return self


def organism_stage(store: RunStore, recipe: Recipe) -> Path:
    """The run-store directory of the organism built from `recipe` (finished once done.json exists)."""
    return store.stage_dir("organism", recipe.digest())
