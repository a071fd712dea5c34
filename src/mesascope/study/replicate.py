"""A recipe's headline figures as a measurement of the recipe: the mean over seeds, not one run.

One organism's figures are reproducible on its own machine only (training numerics differ from
CPU to CPU), so a recipe's headline is built and measured at several seeds; each seed's value
is kept, beside the mean with a Student-t interval over seeds and the machine that ran them.
"""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ..config import EvalSpec, Recipe
from ..progress import Progress, silent
from ..machine import Machine, machine
from ..stats import Measurement
from ..store import RunStore
from .aggregate import pooled_wilson, t_interval

REPLICATE_SCHEMA_VERSION = 1


class SeedMean(BaseModel):
    """The mean over seeds of one figure, its t interval over seeds (None below two; a share's is cut at 0 and
    1) and every seed's value."""

    value: float
    ci: tuple[float, float] | None
    n_seeds: int
    per_seed: dict[str, float]
    n_per_seed: int = Field(description="held-out prompts behind each seed's value")
    pooled: Measurement | None = Field(None, description="every seed's prompts as one sample (Wilson): the prompt-level "
                                       "uncertainty, which the interval over seeds does not show when all seeds agree")


class Replicates(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=True)

    schema_version: int = REPLICATE_SCHEMA_VERSION
    kind: str = "replicates"
    recipe: dict
    eval: dict
    seeds: list[int]
    machine: Machine = Field(default_factory=machine)
    per_seed: dict[str, dict[str, Measurement]] = Field(description="seed -> figure -> its Wilson measurement")
    per_family: dict[str, dict[str, Measurement]] = {}
    mean: dict[str, SeedMean]
    seconds: dict[str, float] = {}
    train_tokens: dict[str, int] = Field({}, description="seed -> tokens in every batch its build trained on (prompt "
                                         "and answer; organism.json's train_tokens)")
    provenance: dict | None = Field(None, description="command, commit and machine that wrote the file")


def at_seed(recipe: Recipe, seed: int) -> Recipe:
    """`recipe` at `seed`; a base built from a recipe takes the same seed, so each seed replicates the whole chain."""
    base = recipe.base
    if base is not None and base.recipe is not None:
        base = base.model_copy(update={"recipe": at_seed(base.recipe, seed)})
    return recipe.model_copy(update={"seed": seed, "base": base})


def stages(run, demo) -> dict[str, dict]:
    """With a demo spec: the stress table's curves (each lr's last step, named METHOD@LR/metric with the lr as
    3e-03) and the detectors' figures, names joined by "/" (no dot: a docs results path can reach them)."""
    from ..detectors.registry import Skipped, get_detector

    out = {}
    run.in_workers(demo.stress, demo.eval, [(name, demo.detector_spec(name)) for name in demo.demo_detectors],
                   measure=False)  # at once, on a CPU with two or more threads (workers.py)
    points = run.stress(demo.stress, demo.eval)
    for p in points:
        if p.step == max(q.step for q in points if q.lr == p.lr and q.method == p.method):
            out.update({f"{p.method}@{p.lr:.0e}/{k}": m for k, m in p.metrics.items() if m is not None})
    for name in demo.demo_detectors:
        result = run.detect(name, demo.detector_spec(name))
        if not isinstance(result, Skipped):
            out.update(get_detector(name).figures(result))
    return {k: m.model_dump(mode="json") for k, m in out.items()}


def replicate(recipe: Recipe, seeds: list[int], store: RunStore, eval_spec: EvalSpec = EvalSpec(),
              progress: Progress = silent, demo=None) -> Replicates:
    """Build (or reuse) the organism of `recipe` at each seed and measure it on held-out prompts; with `demo`
    (a demo spec), also stress-test it and run the demo spec's detectors, each seed's figures kept."""
    from ..pipeline import Run

    if len(set(seeds)) != len(seeds) or not seeds:
        raise ValueError(f"seeds must be distinct and at least one (got {seeds})")
    per_seed, per_family, seconds, tokens = {}, {}, {}, {}
    for seed in seeds:
        t0 = time.perf_counter()
        run = Run(store, at_seed(recipe, seed), progress)
        measured = run.measure(eval_spec)
        if (n := trained_tokens(run.organism)) is not None:
            tokens[str(seed)] = n
        per_seed[str(seed)] = {**measured["metrics"], **(stages(run, demo) if demo is not None else {})}
        per_family[str(seed)] = measured["per_family"]
        seconds[str(seed)] = round(time.perf_counter() - t0, 1)
    figures = [k for k in per_seed[str(seeds[0])] if all(k in m for m in per_seed.values())]
    mean = {}
    for k in figures:
        values = {s: m[k]["value"] for s, m in per_seed.items()}
        t = t_interval(list(values.values()))
        pooled = None if "auroc" in k else pooled_wilson(list(per_seed[s][k] for s in per_seed))  # shares only
        ci = t["ci"]
        if ci and (pooled or "auroc" in k):  # a share or an AUROC: the t interval is cut at 0 and 1
            ci = [max(0.0, ci[0]), min(1.0, ci[1])]
        mean[k] = SeedMean(value=t["value"], ci=ci, n_seeds=len(values), per_seed=values,
                           n_per_seed=min(m[k]["n"] for m in per_seed.values()),
                           pooled={k2: v for k2, v in pooled.items() if k2 != "interval"} if pooled else None)
    return Replicates(recipe=recipe.model_dump(mode="json", exclude={"seed"}), eval=eval_spec.model_dump(mode="json"),
                      seeds=list(seeds), per_seed=per_seed, per_family=per_family, mean=mean, seconds=seconds,
                      train_tokens=tokens)


def trained_tokens(organism) -> int | None:
    """organism.json's train_tokens; for an organism built before builds recorded it, recounted from its recipe
    (a from-scratch, non-distilled build draws the same batches again); otherwise None."""
    if "train_tokens" in organism.info:
        return organism.info["train_tokens"]
    recipe = organism.recipe
    if not isinstance(recipe, Recipe) or recipe.base is not None or recipe.reasoning == "distilled":
        return None
    from ..models import load_tokenizer
    from ..organisms.build import recipe_tokens

    return recipe_tokens(recipe, load_tokenizer(organism.path))


def load_replicates(path: str | Path) -> Replicates:
    data = Replicates.model_validate_json(Path(path).read_text(encoding="utf-8"))
    if data.schema_version != REPLICATE_SCHEMA_VERSION:
        raise ValueError(f"{path} has replicates schema version {data.schema_version}; this mesascope reads "
                         f"{REPLICATE_SCHEMA_VERSION}: rerun `mesascope replicate` to regenerate it")
    return data
