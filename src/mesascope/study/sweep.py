"""Run a Study: every organism of its matrix, then every stress cell, on a pool of workers.

The matrix expands into organism builds and cells (cell = recipe variant x seed x stress
method x learning rate). They run in three phases, each through the run store:

1. organisms that need no other organism (none, cot, and the cot teachers of distilled ones),
2. distilled organisms (each reuses its teacher from phase 1, so no two workers build it),
3. stress cells (each reuses its organism).

A finished build or cell has a done marker in the store and is never recomputed, so a sweep
killed midway and restarted redoes only what had not finished (and an unfinished build
resumes from its last checkpoint). Workers come from backends.py (a local process pool or
Ray). OUT/study.json is a `StudyResults` (results.py): every cell's rows, the aggregates
across seeds (aggregate.py), n_params per size, timings, the machine and the spec.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import Future, as_completed
from dataclasses import dataclass
from pathlib import Path

from ..config import EvalSpec, Recipe
from ..organisms.organism import organism_stage
from ..progress import Progress, silent
from ..provenance import machine
from ..store import RunStore, atomic_write_json, digest
from ..training.stress import StressSpec, labelled
from .aggregate import aggregate
from .backends import BACKENDS, check_backend, make_backend
from .results import StudyResults
from .spec import StudySpec

__all__ = ["BACKENDS", "SweepError", "plan", "run_study"]


class SweepError(RuntimeError):
    """A build or cell failed; everything that finished before it is stored and reused on a rerun."""


@dataclass(frozen=True)
class Build:
    recipe: Recipe
    axes: dict | None  # None: a cot teacher no variant of the study asked for

    @property
    def key(self) -> str:
        return self.recipe.digest()


@dataclass(frozen=True)
class Cell:
    """One persistence curve: a recipe variant at one seed, one stress method, one learning rate."""

    axes: dict
    recipe: Recipe
    stress: StressSpec  # lrs = [the cell's lr], seed shifted by the study seed

    @property
    def id(self) -> str:
        return digest(self.recipe.digest(), self.stress.digest())


@dataclass
class Plan:
    phases: list[list[Build]]
    cells: list[Cell]


def _cost(recipe: Recipe) -> float:
    """Rough work of a build (or of a cell on it), for submission order: the biggest go first, so no
    big one starts last and runs alone while the other workers idle."""
    d, layers, _ = recipe.model.dims
    return d * d * layers * recipe.train.steps * recipe.train.batch_size * (2 if recipe.reasoning != "none" else 1)


def plan(study: StudySpec) -> Plan:
    """The builds of each phase, each listed once, biggest first; the cells in matrix order."""
    from ..organisms.distill import teacher_recipe

    variants = study.variants()
    first: dict[str, Build] = {}
    distilled: dict[str, Build] = {}
    for axes, recipe in variants:
        (distilled if recipe.reasoning == "distilled" else first)[recipe.digest()] = Build(recipe, axes)
    for b in list(distilled.values()):
        teacher = teacher_recipe(b.recipe)
        first.setdefault(teacher.digest(), Build(teacher, None))
    cells = []
    for axes, recipe in variants:
        for method in study.methods:
            for lr in method.lrs:
                stress = method.model_copy(update={"lrs": [lr], "seed": method.seed + recipe.seed})
                cells.append(Cell({**axes, "method": method.method, "lr": lr}, recipe, stress))
    return Plan([sorted(builds.values(), key=lambda b: -_cost(b.recipe)) for builds in (first, distilled)], cells)


def cell_stage(store: RunStore, cell: Cell, eval_spec: EvalSpec) -> Path:
    return store.stage_dir("cell", digest(cell.id, eval_spec.digest()))


# --- what a worker runs (module-level functions, so both a spawned process and Ray can import them) ---

def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)  # cores / workers, so workers do not oversubscribe the machine


def build_task(root: str, recipe: Recipe, threads: int) -> dict:
    from ..organisms.build import build_organism

    _threads(threads)
    t0, c0 = time.perf_counter(), time.process_time()
    organism = build_organism(recipe, RunStore(root))
    return {"path": str(organism.path), "info": organism.info, "seconds": round(time.perf_counter() - t0, 2),
            "cpu_seconds": round(time.process_time() - c0, 2), "computed": True}


def cell_task(root: str, cell: Cell, eval_spec: EvalSpec, threads: int) -> dict:
    """Run one cell, or read it back if a previous sweep finished it; the result is stored atomically."""
    from ..organisms.build import build_organism
    from ..text.corpus import build_corpus
    from ..training.stress import stress_test

    store = RunStore(root)
    stage = cell_stage(store, cell, eval_spec)
    if store.is_done(stage):
        return {**store.read_json(stage / "cell.json"), "computed": False}
    _threads(threads)
    t0, c0 = time.perf_counter(), time.process_time()  # CPU time too: on a shared machine wall time is noise
    organism = build_organism(cell.recipe, store)  # built in an earlier phase: read back
    rows = stress_test(organism, build_corpus(cell.recipe), cell.stress, eval_spec, store)
    result = {"id": cell.id, "axes": cell.axes, "recipe_digest": cell.recipe.digest(), "organism": str(organism.path),
              "stress": cell.stress.model_dump(mode="json"), "rows": rows,
              "seconds": round(time.perf_counter() - t0, 2), "cpu_seconds": round(time.process_time() - c0, 2)}
    atomic_write_json(stage / "cell.json", result)
    store.mark_done(stage)
    return {**result, "computed": True}


def _drain(futures: dict[Future, tuple[str, dict | None]], task: str, total: int, done: int,
           progress: Progress) -> dict:
    """Wait for every future (mapped to its key and axes); a failure cancels the rest and names its axes."""
    results = {}
    for f in as_completed(futures):
        if f.exception() is not None:
            for other in futures:
                other.cancel()
            key, axes = futures[f]
            raise SweepError(f"{task}: {axes or key} failed: {f.exception()!r} (finished ones are stored; "
                             "rerun the sweep to go on from there)") from f.exception()
        results[futures[f][0]] = f.result()
        done += 1
        progress(task, done, total)
    return results


def run_study(study: StudySpec, out: str | Path, *, backend: str = "local", workers: int | None = None,
              address: str | None = None, quick: bool = False, threads: int | None = None,
              progress: Progress = silent) -> StudyResults:
    """Run every build and cell of `study` (its quick variant with `quick`), reuse what is stored in
    `out`, aggregate across seeds, and write OUT/study.json; returns what it wrote.

    Each worker runs `threads` torch threads (default: CPU cores // workers). A ConditioningSpec runs its own
    study (study/conditioning.py)."""
    if not isinstance(study, StudySpec):
        from .conditioning import run_conditioning

        return run_conditioning(study, out, backend=backend, workers=workers, address=address, quick=quick,
                                threads=threads, progress=progress)
    t_start = time.perf_counter()
    spec = study.quick_variant() if quick else study
    workers = workers or os.cpu_count() or 1
    check_backend(backend, workers, address)  # now, not only once there is work to run
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, not {threads} (or None: CPU cores // workers)")
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    out = Path(out).resolve()
    store, root = RunStore(out), str(out)
    p = plan(spec)
    builds = {b.key: b for phase in p.phases for b in phase}
    build_results: dict[str, dict] = {}
    cell_results: dict[str, dict] = {}
    timings: dict[str, float] = {}
    runner = None
    try:
        n_built = sum(store.is_done(organism_stage(store, b.recipe)) for b in builds.values())
        progress("organisms", n_built, len(builds))
        for i, phase in enumerate(p.phases, 1):
            t0 = time.perf_counter()
            todo = [b for b in phase if not store.is_done(organism_stage(store, b.recipe))]
            if todo:
                runner = runner or make_backend(backend, workers, address)
                futures = {runner.submit(build_task, root, b.recipe, threads): (b.key, b.axes) for b in todo}
                build_results |= _drain(futures, "organisms", len(builds), n_built, progress)
                n_built += len(todo)
            timings[f"phase{i}_builds_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        stages = {c.id: cell_stage(store, c, spec.eval) for c in p.cells}
        # Two variants can make the same recipe (an override of a field their reasoning never reads): run it once.
        todo = sorted({c.id: c for c in p.cells if not store.is_done(stages[c.id])}.values(),
                      key=lambda c: -_cost(c.recipe))
        n_cells = len({c.id for c in p.cells})
        progress("cells", n_cells - len(todo), n_cells)
        if todo:
            runner = runner or make_backend(backend, workers, address)
            futures = {runner.submit(cell_task, root, c, spec.eval, threads): (c.id, c.axes) for c in todo}
            cell_results = _drain(futures, "cells", n_cells, n_cells - len(todo), progress)
        timings["phase3_cells_s"] = round(time.perf_counter() - t0, 2)
    finally:
        if runner is not None:
            runner.close()
    cells = []
    for c in p.cells:
        r = cell_results.get(c.id) or {**store.read_json(stages[c.id] / "cell.json"), "computed": False}
        # The plan's spec, not the stored one: a cell stored under older field names has the same digest.
        cells.append({**r, "axes": c.axes, "stress": c.stress.model_dump(mode="json"), "rows": labelled(r["rows"])})
    organisms = []
    for key, b in builds.items():
        path = organism_stage(store, b.recipe) / "organism"
        info = store.read_json(path / "organism.json")
        organisms.append({"recipe_digest": key, "axes": b.axes, "role": "variant" if b.axes else "teacher",
                          "path": str(path), "computed": key in build_results,
                          **{k: build_results[key][k] for k in ("seconds", "cpu_seconds") if key in build_results},
                          **{k: info.get(k) for k in ("n_params", "train_seconds", "final_loss", "n_train_examples")}})
    timings["total_s"] = round(time.perf_counter() - t_start, 2)
    timings["computed_cpu_s"] = round(sum(r.get("cpu_seconds", 0.0) for r in [*build_results.values(),
                                                                               *cell_results.values()]), 2)
    result = StudyResults.model_validate({
        "machine": machine(),
        "study": spec,
        "quick": quick,
        "backend": {"name": backend, "workers": workers, "torch_threads_per_worker": threads, "address": address},
        "axes": _axes(spec),
        "methods": {m.method: {"label": m.label, "metrics": list(m.metrics), "readings": list(m.readings)}
                    for m in spec.methods},
        "sizes": _sizes(spec, organisms),
        "organisms": organisms,
        "cells": cells,
        "aggregates": aggregate(cells),
        "aggregation": {"seed_mean": "mean over seeds, 95% Student-t interval over seeds (n = seeds; null with one)",
                        "pooled": "all prompts of all seeds as one sample, 95% Wilson interval (n = prompts); "
                                  "ignores between-seed variance, so narrower"},
        "counts": {"organisms": len(organisms), "organisms_computed": len(build_results), "cells": len(cells),
                   "cells_computed": len(cell_results)},
        "timings": timings,
    })
    atomic_write_json(out / "study.json", result.model_dump(mode="json"))
    return result


def _axes(spec: StudySpec) -> dict:
    """Each axis and its values, in the order StudySpec.variants expands them (seeds innermost)."""
    return {"size": list(spec.size_labels()), "reasoning": spec.reasoning or [spec.recipe.reasoning],
            **spec.overrides, "seed": spec.seeds if spec.seeds is not None else [spec.recipe.seed],
            "method": [m.method for m in spec.methods], "lr": {m.method: m.lrs for m in spec.methods}}


def _sizes(spec: StudySpec, organisms: list[dict]) -> dict:
    """Per size label: the dims and the parameter counts of its built organisms (vocab can differ a little)."""
    out = {}
    for label in spec.size_labels():
        recipes = [r for a, r in spec.variants() if a["size"] == label]
        counts = sorted({o["n_params"] for o in organisms if o["axes"] and o["axes"]["size"] == label})
        out[label] = {"dims": list(recipes[0].model.dims), "n_params": counts}
    return out


def publish(result: StudyResults, out: str | Path, results: str | Path | None = None) -> tuple[dict, list, Path]:
    """(study data, the paper's questions answered from it, OUT/report.html); with `results`, both also written there
    with provenance, for the docs."""
    if not isinstance(result, StudyResults):  # a conditioning study's
        from .conditioning import publish as publish_conditioning

        return publish_conditioning(result, out, results)
    from ..provenance import write_results
    from ..report.study import write_study_report
    from .findings import findings

    data = result.model_dump(mode="json")
    found = findings(data)
    if results:
        write_results(results, {**data, "findings": found})
    return data, found, write_study_report(data, Path(out))
