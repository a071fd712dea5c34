"""Recipe -> corpus -> tokenizer -> trained organism, saved as a standard Hugging Face directory.

The organism directory holds `config.json`, `model.safetensors`, `tokenizer.json`, `recipe.json`
and `train_log.json`: `AutoModelForCausalLM.from_pretrained(dir)` loads it, and so do
TransformerLens, nnsight and Inspect. Training checkpoints live beside it in the run store,
so a killed build resumes where it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..config import Recipe
from ..models import build_model, n_params, train_tokenizer
from ..models.device import runtime
from ..progress import Progress, silent
from ..store import RunStore, atomic_dir, atomic_write_json
from .organism import Organism, organism_stage
from ..text.corpus import TURN_MARKERS, Corpus, build_corpus
from ..text.scratchpad import MARKERS
from ..training.sft import SFTTrainer, fit_length, tokenize_examples, train_tokens


def stage_tokenizer(stage: Path, texts: list[str], vocab_size: int, whole: tuple[str, ...],
                    progress: Progress = silent):
    """The build's tokenizer: trained on `texts` and saved in the stage, or read back from there on a
    resumed build (the checkpoint's ids refer to it). Left-padded, for batched generation."""
    tok_dir = stage / "tokenizer"
    if (tok_dir / "tokenizer.json").exists():
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    else:
        progress("tokenizer", 0, 1)
        tokenizer = train_tokenizer(texts, vocab_size, whole=whole)
        with atomic_dir(tok_dir) as tmp:
            tokenizer.save_pretrained(tmp)
        progress("tokenizer", 1, 1)
    tokenizer.padding_side = "left"
    return tokenizer


def whole_tokens(recipe: Recipe) -> tuple[str, ...]:
    """Strings the build's tokenizer keeps whole (turn markers; a cot organism's scratchpad tags)."""
    return TURN_MARKERS + (MARKERS if recipe.reasoning == "cot" else ())


def training_data(recipe: Recipe, train, tokenizer) -> list[tuple[list[int], int]]:
    """The build's tokenized examples: (ids, prompt length), each cut to the model's max_length."""
    cut = recipe.model.max_length
    return fit_length(tokenize_examples(tokenizer, [e.prompt for e in train], [e.target for e in train], cut + 1),
                      cut, recipe.reasoning)


def recipe_tokens(recipe: Recipe, tokenizer=None) -> int:
    """Training tokens a from-scratch build of `recipe` draws (organism.json's `train_tokens`), without training:
    its corpus, tokenizer (pass the organism's own, or one is trained as the build would) and batch plan. Not for
    a distilled recipe, whose examples come from its teacher, nor one built from a base."""
    if recipe.reasoning == "distilled" or recipe.base is not None:
        raise ValueError("recipe_tokens counts from-scratch, non-distilled builds: read organism.json's train_tokens")
    train = build_corpus(recipe).train
    if tokenizer is None:
        tokenizer = train_tokenizer([e.prompt + " " + e.target for e in train], recipe.model.vocab_size,
                                    whole=whole_tokens(recipe))
    return train_tokens(training_data(recipe, train, tokenizer), recipe.train, recipe.seed)


def compiled(trainer: SFTTrainer) -> dict:
    """organism.json's record of `train.compile`: whether the forward pass ran compiled, or why not."""
    if not trainer.spec.compile:
        return {}
    error = trainer.forward.error  # a Compiled: None unless compiling failed
    return {"compiled": error is None, **({"compile_error": error} if error else {})}


def train_and_save(store: RunStore, stage: Path, recipe, tokenizer, data: list, progress: Progress, t0: float,
                   info: dict, **trainer_kw) -> None:
    """Train a fresh model of `recipe.model` on tokenized `data` (resuming from the stage's checkpoints),
    write the organism directory atomically (weights, tokenizer, recipe.json, train_log.json, and
    organism.json: the common figures, the device and precision it trained in (`--dtype bfloat16` gives
    another organism than float32, not only other rounding, and the run store does not key by it), then
    `info`) and mark the stage done. `trainer_kw` go to SFTTrainer."""
    model = build_model(recipe.model, tokenizer, recipe.seed).to(runtime().torch_device)
    trainer = SFTTrainer(model, data, recipe.train, pad_id=tokenizer.pad_token_id, seed=recipe.seed,
                         ckpt_dir=stage / "checkpoints", **trainer_kw)
    resumed = trainer.resume()
    total = recipe.train.steps
    progress("build", resumed, total)
    trainer.train_until(total, on_step=lambda s, loss: progress("build", s, total))
    with atomic_dir(stage / "organism") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / "recipe.json", recipe.model_dump(mode="json"))
        atomic_write_json(tmp / "train_log.json", trainer.log)
        atomic_write_json(tmp / "organism.json", {
            "n_params": n_params(model), "architecture": recipe.model.architecture, "train_steps": total,
            "resumed_from_step": resumed, "train_seconds": round(time.perf_counter() - t0, 2),
            "final_loss": trainer.log[-1]["loss"] if trainer.log else None,
            "train_tokens": train_tokens(data, recipe.train, recipe.seed), "trained_on": runtime().describe(),
            **compiled(trainer), **info})
    store.mark_done(stage, resumed_from_step=resumed)


def build_organism(recipe: Recipe, store: RunStore, progress: Progress = silent,
                   corpus: Corpus | None = None) -> Organism:
    """Build (or reuse, or resume) the organism for `recipe` in the run store."""
    stage = organism_stage(store, recipe)
    final = stage / "organism"
    if store.is_done(stage):
        return Organism(final, recipe)
    if recipe.base is not None:  # fine-tune an existing model instead of training a fresh one
        from .base import build_from_base
        return build_from_base(recipe, store, progress, corpus, build_base=build_organism)
    t0 = time.perf_counter()
    corpus = corpus or build_corpus(recipe)
    train, distilled = corpus.train, {}
    if recipe.reasoning == "distilled":  # train on the cot organism's answers instead, scratchpads removed
        from .distill import distillation_set
        train, distilled = distillation_set(recipe, store, corpus, stage, progress, build_teacher=build_organism)
    tokenizer = stage_tokenizer(stage, [e.prompt + " " + e.target for e in train], recipe.model.vocab_size,
                                whole_tokens(recipe), progress)
    data = training_data(recipe, train, tokenizer)
    train_and_save(store, stage, recipe, tokenizer, data, progress, t0, {
        "n_train_examples": len(train), "near_miss_train": corpus.near_miss_train,
        "near_miss_held_out": corpus.near_miss_held_out, "reasoning": recipe.reasoning, **distilled})
    return Organism(final, recipe)
