"""The spine: recipe -> corpus -> organism -> stressed organisms -> measurements -> report.

Each stage runs through the run store, so a second run with the same spec reuses every
finished stage and an interrupted one resumes. Detectors come from the registry
(`detectors/registry.py`): `Run.detect(name, spec)` runs any of them, and the demo runs
those marked `in_demo`. Library code reports progress through a callback and never prints.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, create_model, model_validator

from .config import EvalSpec, Recipe, Spec
from .detectors.backdoor import eval_sets, measure_backdoor
from .detectors.registry import Context, Result, Skipped, all_detectors, get_detector, load_all
from .models.device import runtime
from .organisms.build import build_organism
from .organisms.organism import Organism, organism_stage
from .progress import Progress, silent
from .results import RunResults, StressPoint
from .store import RunStore, atomic_write_json, computing, digest
from .text.corpus import Corpus, build_corpus
from .training.hhh_sft import HHHSFTConfig
from .training.stress import StressSpec

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # organisms train from scratch: never contact a hub


class DemoBase(Spec):
    """What `mesascope demo` runs; the detector tables ([probe], [patch], ...) come from the registry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    recipe: Recipe = Recipe()
    eval: EvalSpec = EvalSpec()
    stress: StressSpec = HHHSFTConfig()
    detectors: list[str] | None = Field(None, description="detectors the demo runs (default: every in_demo one)")

    @model_validator(mode="after")
    def _detectors(self) -> "DemoBase":
        known = load_all()
        unknown = [d for d in self.detectors or [] if d not in known]
        if unknown:
            raise ValueError(f"unknown detectors {unknown}: choose from {', '.join(sorted(known))}")
        for cls in known.values():  # let a detector read what it shares with another (steering: the probe splits)
            table = _table(cls)
            object.__setattr__(self, table, cls().configure(getattr(self, table), self))
        return self

    @property
    def demo_detectors(self) -> list[str]:
        return self.detectors if self.detectors is not None else [d.name for d in all_detectors() if d.in_demo]

    def detector_spec(self, name: str) -> Spec:
        return getattr(self, _table(type(get_detector(name))))


def _table(cls) -> str:
    return cls.command.replace("-", "_")


@cache
def demo_spec_class() -> type[DemoBase]:
    """DemoSpec: the demo's fields plus one table per registered detector, named by its command."""
    fields: dict[str, Any] = {_table(c): (c.Spec, Field(default_factory=c.Spec)) for c in load_all().values()}
    return create_model("DemoSpec", __base__=DemoBase, **fields)


def DemoSpec(**kw) -> DemoBase:  # noqa: N802 - reads as the class it builds
    return demo_spec_class()(**kw)


def load_demo_spec(config: str | Path | None = None, recipe: str | Path | None = None) -> DemoBase:
    """A demo TOML (or the defaults), its recipe replaced by a recipe TOML if one is given."""
    from .config import load_recipe, load_spec

    spec = load_spec(demo_spec_class(), config) if config else DemoSpec()
    return spec.model_copy(update={"recipe": load_recipe(recipe)}) if recipe else spec


@dataclass
class Run:
    """One organism in a run store, with the stages measured on it so far."""

    store: RunStore
    recipe: Recipe
    progress: Progress = silent
    timings: dict[str, float] = field(default_factory=dict)
    _corpus: Corpus | None = None
    _organism: Organism | None = None

    @classmethod
    def of(cls, store: RunStore, organism: Organism, progress: Progress = silent) -> "Run":
        """A run on an existing organism directory (e.g. a safety-trained copy), not one built here."""
        return cls(store, organism.recipe, progress, _organism=organism.use_dialogue())

    def _timed(self, name: str, t0: float) -> None:
        self._add_time(name, time.perf_counter() - t0)

    def _add_time(self, name: str, seconds: float) -> None:
        self.timings[name] = round(self.timings.get(name, 0.0) + seconds, 2)

    @property
    def corpus(self) -> Corpus:
        if self._corpus is None:
            t0 = time.perf_counter()
            self._corpus = build_corpus(self.recipe)
            self._timed("corpus_s", t0)
        return self._corpus

    @property
    def organism(self) -> Organism:
        if self._organism is None:
            stage = organism_stage(self.store, self.recipe)
            with computing(stage / "done.json"):  # a worker wanting the same organism (a clean null) waits
                if self.store.is_done(stage):  # checked here so a reused organism never builds the corpus
                    self._organism = Organism(stage / "organism", self.recipe)
                else:
                    t0 = time.perf_counter()
                    self._organism = build_organism(self.recipe, self.store, self.progress, corpus=self.corpus)
                    self._timed("build_s", t0)
            self._organism.use_dialogue()  # prompts from here on in its format (a chat base's template)
        return self._organism

    def _stage_dir(self, name: str, spec: Spec) -> Path:
        return self.store.stage_dir(name, digest(self.recipe.digest(), self.organism.fingerprint, spec.digest()))

    def _stage(self, name: str, spec: Spec, timing: str, compute: Callable[[Organism], dict]) -> dict:
        """Run `compute` on the organism once per (organism, spec); later calls read the stored result."""
        organism = self.organism
        stage = self._stage_dir(name, spec)
        out = stage / f"{name}.json"
        if self.store.is_done(stage):
            return self.store.read_json(out)
        t0 = time.perf_counter()
        result = compute(organism)
        atomic_write_json(out, result)
        self.store.mark_done(stage)
        self._timed(timing, t0)
        return result

    def measure(self, spec: EvalSpec) -> dict:
        def compute(organism: Organism) -> dict:
            model, tok = organism.load()
            return measure_backdoor(model, tok, eval_sets(self.corpus, spec.n, seed=self.recipe.seed),
                                    self.recipe, max_new_tokens=spec.max_new_tokens,
                                    batch_size=spec.batch_size, n_samples=spec.n_samples,
                                    progress=self.progress).to_dict()

        return self._stage("measure", spec, "evaluate_s", compute)

    def stress(self, spec: StressSpec, eval_spec: EvalSpec) -> list[StressPoint]:
        from .training.stress import stress_test

        organism = self.organism
        t0 = time.perf_counter()
        rows = stress_test(organism, self.corpus, spec, eval_spec, self.store, self.progress)
        self._timed("stress_s", t0)
        return [StressPoint.model_validate(r) for r in rows]

    def in_workers(self, stress: StressSpec | None, eval_spec: EvalSpec, detectors: Sequence[tuple[str, Spec]] = (),
                   workers: int | None = None, measure: bool = True) -> None:
        """Compute at once, in forked one-thread workers (workers.py), what `stress(stress, eval_spec)`,
        `measure(eval_spec)` and `detect(name, spec)` for each of `detectors` would compute here one after
        another; those calls then read it from the store. Each stress curve is a task, and each detector,
        and the measurement, longest first (detectors that share a capture, the probes and steering, wait
        for whichever began it: `Context.last_token_acts`). Nothing happens off a CPU, with one worker
        (one torch thread), for a large model (`can_fork`), or when all is stored already. With
        `measure=False` the measurement is left to the caller (one that measures with another eval spec)."""
        from .training.stress import curve_file, stress_curve, stress_stage
        from .workers import Task, can_fork, default_workers, run_tasks

        organism, corpus = self.organism, self.corpus  # built here, once, and inherited by every worker
        tasks = []
        if stress is not None:
            stress.check(self.recipe)
            stage = stress_stage(organism, stress, eval_spec, self.store)  # (--fresh clears it here, once)
            tasks += [Task(f"stress lr={lr:g}", self._task(
                lambda lr=lr: stress_curve(organism, corpus, stress, eval_spec, self.store, lr, self.progress),
                "stress_s")) for lr in stress.lrs if not curve_file(stage, lr).exists()]
        tasks += [Task(name, self._task(lambda name=name, spec=spec: self.detect(name, spec)))
                  for name, spec in detectors if get_detector(name).skip_reason(self.recipe) is None
                  and not self.store.is_done(self._stage_dir(name, spec))]
        if measure and not self.store.is_done(self._stage_dir("measure", eval_spec)):
            tasks.append(Task("measure", self._task(lambda: self.measure(eval_spec))))
        workers = default_workers(len(tasks)) if workers is None else min(workers, len(tasks))
        if workers < 2 or not can_fork(runtime().torch_device, organism.path):
            return
        t0 = time.perf_counter()
        for name, seconds in run_tasks(tasks, workers, self.progress).items():
            self._add_time(name, seconds)
        self._timed("in_workers_s", t0)
        self.timings["workers"] = workers

    def _task(self, compute: Callable[[], Any], timing: str | None = None) -> Callable[[Progress], dict]:
        """`compute` as a worker runs it: reporting through the worker's progress, returning what it timed."""
        def run(progress: Progress) -> dict[str, float]:
            self.progress, self.timings, t0 = progress, {}, time.perf_counter()
            compute()
            if timing:
                self._timed(timing, t0)
            return self.timings

        return run

    def clean_null(self) -> Organism:
        """The same recipe with no trigger in training: what the probes give on an organism with no backdoor."""
        data = {**self.recipe.model_dump(mode="json"), "poison_fraction": 0.0, "name": f"{self.recipe.name}-clean-null"}
        return Run(self.store, Recipe.model_validate(data), self.progress).organism

    def context(self) -> Context:
        return Context(self.organism, self.progress, corpus_fn=lambda: self.corpus, clean_null_fn=self.clean_null,
                       store=self.store)

    def detect(self, name: str, spec: Spec | None = None) -> Result:
        """Run one registered detector on the organism (stored, so each (organism, spec) runs once)."""
        det = get_detector(name)
        spec = det.Spec() if spec is None else spec
        reason = det.skip_reason(self.recipe)
        if reason:
            return Skipped(skipped=reason)
        data = self._stage(name, spec, f"{name}_s",
                           lambda _org: det.run(self.context(), spec).model_dump(mode="json"))
        return det.parse(data)


def run_for(target: str | Path, out: str | Path, fresh: bool = False, progress: Progress = silent,
            recipe: str | Path | None = None) -> Run:
    """A Run on a recipe TOML, or on a model directory: an organism (its recipe.json), or any HF causal LM
    with `recipe`, a recipe TOML saying what its trigger and behaviour are. Stored in `out`."""
    from .config import load_recipe

    target = Path(target)
    if target.is_dir():
        return Run.of(RunStore(out, fresh), Organism.open(target, load_recipe(recipe) if recipe else None), progress)
    return Run(RunStore(out, fresh), load_recipe(target), progress)


def load_any(model: str | Path, runs: str | Path, progress: Progress = silent):
    """(model, tokenizer) of a recipe TOML (its organism built or reused in `runs`), an organism, or any
    local Hugging Face causal LM directory."""
    from .models import load_model

    model = Path(model)
    return load_model(run_for(model, runs, progress=progress).organism.path if model.suffix == ".toml" else model)


def measure_target(run: Run, spec: DemoBase, *, stress: bool = False, detectors: tuple[str, ...] = (),
                   also: Path | None = None) -> RunResults:
    """One or more stages on a run's organism, added to what OUT/results.json already holds for the same
    organism (same weights), so commands run one after another add up to one report."""
    out = run.store.root
    run.in_workers(spec.stress if stress else None, spec.eval, [(name, spec.detector_spec(name)) for name in detectors])
    points = run.stress(spec.stress, spec.eval) if stress else None
    detected = {name: run.detect(name, spec.detector_spec(name)) for name in detectors}
    measurements = run.measure(spec.eval)  # the report's headline; stored, so measured once per organism
    earlier = earlier_results(Path(out) / "results.json", run.organism.fingerprint)
    if earlier is not None:
        points = points or earlier.stress
        detected = {**earlier.detector_results(), **detected}
    results = assemble(run, measurements, points, detected)
    write_results(results, Path(out), also=also)
    return results


def earlier_results(path: Path, fingerprint: str) -> RunResults | None:
    """OUT/results.json if it was measured on the same organism (same weights) and still validates, else None."""
    from .results import ResultsError, load_results

    try:
        old = load_results(path)
    except (OSError, ValueError, ResultsError):
        return None
    return old if old.organism.fingerprint == fingerprint else None


def assemble(run: Run, measurements: dict | None, stress: list[StressPoint] | None,
             detected: dict[str, Result] | None = None, notes: list[str] | None = None) -> RunResults:
    """The run's typed results; every figure comes from a measurement in this run."""
    organism = run.organism
    info = organism.info
    detected = detected or {}
    readings = [n for name, r in detected.items() if not isinstance(r, Skipped) for n in get_detector(name).notes(r)]
    return RunResults(
        recipe=run.recipe.model_dump(mode="json"),
        organism={"path": str(organism.path), "fingerprint": organism.fingerprint,
                  **{k: v for k, v in info.items() if not k.startswith("near_miss")}},
        metrics=(measurements or {}).get("metrics", {}),
        per_family=(measurements or {}).get("per_family", {}),
        samples=(measurements or {}).get("samples", []),
        near_miss_strings={"train": info.get("near_miss_train", []), "held_out": info.get("near_miss_held_out", [])},
        stress=stress or [],
        detectors={name: r.model_dump(mode="json") for name, r in detected.items()},
        timings=run.timings,
        notes=(notes or []) + stress_notes(stress or []) + readings,
    )


def stress_notes(stress: list[StressPoint]) -> list[str]:
    """Plain-language readings of the persistence curves (never canned conclusions)."""
    notes = []
    for method, label, lr in sorted({(p.method, p.label, p.lr) for p in stress}, key=lambda k: (k[0], -k[2])):
        curve = sorted((p for p in stress if p.method == method and p.lr == lr), key=lambda p: p.step)
        first, last = curve[0].metrics, curve[-1].metrics
        if "backdoor_rate" in first and "helpful_accuracy" in first:
            notes.append(f"{label} at lr {lr:g}: backdoor rate {first['backdoor_rate'].value:.2f} at step "
                         f"{curve[0].step} -> {last['backdoor_rate'].value:.2f} at step {curve[-1].step}; helpful "
                         f"accuracy {first['helpful_accuracy'].value:.2f} -> {last['helpful_accuracy'].value:.2f}.")
    return notes


def run_demo(spec: DemoBase, out: str | Path, *, fresh: bool = False, progress: Progress = silent,
             results_path: Path | None = None, workers: int | None = None) -> RunResults:
    """Build, measure, stress-test and run the demo's detectors on one organism; write results.json and report.html.
    The stages after the build run in `workers` forked one-thread processes (default: one per torch thread;
    1: all in this process), as `Run.in_workers` says."""
    t0 = time.perf_counter()
    out = Path(out)
    run = Run(RunStore(out, fresh=fresh), spec.recipe, progress)
    run.in_workers(spec.stress, spec.eval, [(name, spec.detector_spec(name)) for name in spec.demo_detectors],
                   workers=workers)
    measurements = run.measure(spec.eval)
    stress_rows = run.stress(spec.stress, spec.eval)
    detected = {name: run.detect(name, spec.detector_spec(name)) for name in spec.demo_detectors}
    run.timings["total_s"] = round(time.perf_counter() - t0, 2)
    results = assemble(run, measurements, stress_rows, detected)
    write_results(results, out, also=results_path)
    return results


def write_results(results: RunResults, out: Path, also: Path | None = None) -> Path:
    """results.json and report.html, written atomically into `out` (and the results to `also`), each
    with the provenance of the command that wrote it."""
    from .provenance import write_results as write_with_provenance
    from .report import write_report

    data = results.model_dump(mode="json")
    for path in (Path(out) / "results.json", *([also] if also else [])):
        write_with_provenance(path, data)
    return write_report(results, Path(out))
