"""The spine: recipe -> corpus -> organism -> stressed organisms -> measurements -> report.

Each stage runs through the run store, so a second run with the same spec reuses every
finished stage and an interrupted one resumes. Library code reports progress through a
callback and never prints; the CLI renders.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .config import DemoSpec, EvalSpec, PatchSpec, ProbeSpec, Recipe, Spec, SteerSpec, StressSpec
from .detectors.backdoor import eval_sets, measure_backdoor
from .organisms.build import Organism, build_organism, organism_stage
from .progress import Progress, silent
from .store import RunStore, atomic_write_json, digest
from .text.corpus import Corpus, build_corpus

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # organisms train from scratch: never contact a hub


class SteerPlan(Spec):
    steer: SteerSpec
    probe: ProbeSpec


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
        return cls(store, organism.recipe, progress, _organism=organism)

    def _timed(self, name: str, t0: float) -> None:
        self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t0, 2)

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
            if self.store.is_done(stage):  # checked here so a reused organism never builds the corpus
                self._organism = Organism(stage / "organism", self.recipe)
            else:
                t0 = time.perf_counter()
                self._organism = build_organism(self.recipe, self.store, self.progress, corpus=self.corpus)
                self._timed("build_s", t0)
        return self._organism

    def _stage(self, name: str, spec: Spec, timing: str, compute: Callable[[Organism], dict]) -> dict:
        """Run `compute` on the organism once per (organism, spec); later calls read the stored result."""
        organism = self.organism
        stage = self.store.stage_dir(name, digest(self.recipe.digest(), organism.fingerprint, spec.digest()))
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

    def stress(self, spec: StressSpec, eval_spec: EvalSpec) -> list[dict]:
        from .training.safety import stress_test

        organism = self.organism
        t0 = time.perf_counter()
        rows = stress_test(organism, self.corpus, spec, eval_spec, self.store, self.progress)
        self._timed("stress_s", t0)
        return rows

    def clean_null(self) -> Organism:
        """The same recipe with no trigger in training: what the probes give on an organism with no backdoor."""
        data = {**self.recipe.model_dump(mode="json"), "poison_fraction": 0.0, "name": f"{self.recipe.name}-clean-null"}
        return Run(self.store, Recipe.model_validate(data), self.progress).organism

    def probe(self, spec: ProbeSpec) -> dict:
        from .detectors.probes import build_probe_splits, run_probes
        from .models import build_model

        def compute(organism: Organism) -> dict:
            model, tok = organism.load()
            # Null model: same architecture and shape, random weights (another seed than the organism's init).
            random_model = build_model(self.recipe.model, tok, seed=self.recipe.seed + 7919).eval()
            clean = {}
            if spec.clean_null:
                clean_model, clean_tok = self.clean_null().load()
                clean = {"clean_model": clean_model, "clean_tokenizer": clean_tok}
            splits = build_probe_splits(self.corpus, spec)
            if self.recipe.reasoning == "cot":
                splits = read_at_scratchpad_end(model, tok, splits)
            result = run_probes(model, tok, random_model, splits, spec, self.progress, **clean)
            result["read_at"] = "</scratchpad>" if self.recipe.reasoning == "cot" else "last prompt token"
            return result

        return self._stage("probe", spec, "probe_s", compute)

    def patch(self, spec: PatchSpec) -> dict:
        from .detectors.patching import run_patching

        if self.recipe.reasoning == "cot":
            return {"skipped": "patching scores the behaviour's first tokens right after the prompt; a cot organism "
                               "writes its scratchpad there first, so the metric would not measure the behaviour"}
        if self.recipe.behaviour_type != "say":
            return {"skipped": "patching scores the log-probability of one fixed behaviour string; this organism's "
                               f"behaviour ({self.recipe.behaviour_type}) has no single string to score"}

        def compute(organism: Organism) -> dict:
            model, tok = organism.load()
            return run_patching(model, tok, self.corpus, self.recipe.response, spec, self.progress)

        return self._stage("patch", spec, "patch_s", compute)

    def steer(self, spec: SteerSpec, probe_spec: ProbeSpec) -> dict:
        from .detectors.steering import run_steering

        def compute(organism: Organism) -> dict:
            model, tok = organism.load()
            return run_steering(model, tok, self.corpus, self.recipe, spec, probe_spec, self.progress)

        key = SteerPlan(steer=spec, probe=probe_spec)  # the direction is fitted with the probe spec's splits
        return self._stage("steer", key, "steer_s", compute)


def read_at_scratchpad_end(model, tok, splits: dict[str, list[str]]) -> dict[str, list[str]]:
    """A cot organism's probe prompts, each extended with its own scratchpad up to `</scratchpad>`.

    The post reads chain-of-thought models at the end of their reasoning. Prompts where the
    organism wrote no closed scratchpad are dropped (their count stays visible in n_test).
    """
    from .text.scratchpad import scratchpad_end_prompts

    return {name: [p for p in scratchpad_end_prompts(model, tok, prompts) if p is not None]
            for name, prompts in splits.items()}


def assemble(run: Run, measurements: dict | None, stress: list[dict] | None, probes: dict | None,
             notes: list[str] | None = None, patching: dict | None = None, steering: dict | None = None) -> dict:
    """The results dict the report renders; every figure comes from a measurement in this run."""
    organism = run.organism
    info = organism.info
    return {
        "mesascope_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()},
        "recipe": run.recipe.model_dump(mode="json"),
        "organism": {"path": str(organism.path), "fingerprint": organism.fingerprint,
                     **{k: v for k, v in info.items() if not k.startswith("near_miss")}},
        "metrics": (measurements or {}).get("metrics", {}),
        "per_family": (measurements or {}).get("per_family", {}),
        "samples": (measurements or {}).get("samples", []),
        "near_miss_strings": {"train": info.get("near_miss_train", []), "held_out": info.get("near_miss_held_out", [])},
        "stress": stress or [],
        "probes": probes or {},
        "patching": patching or {},
        "steering": steering or {},
        "timings": run.timings,
        "notes": (notes or []) + auto_notes(measurements, stress, probes) + detection_notes(patching, steering),
    }


def auto_notes(measurements: dict | None, stress: list[dict] | None, probes: dict | None) -> list[str]:
    """Plain-language readings of this run's own numbers (never canned conclusions)."""
    notes = []
    for lr in sorted({r["lr"] for r in stress or []}, reverse=True):
        curve = sorted((r for r in stress if r["lr"] == lr), key=lambda r: r["step"])
        first, last = curve[0], curve[-1]
        notes.append(f"HHH SFT at lr {lr:g}: backdoor rate {first['backdoor_rate']['value']:.2f} at step "
                     f"{first['step']} -> {last['backdoor_rate']['value']:.2f} at step {last['step']}; helpful accuracy "
                     f"{first['helpful_accuracy']['value']:.2f} -> {last['helpful_accuracy']['value']:.2f}.")
    sup = (probes or {}).get("supervised") or []
    if sup:
        rand = max(r["random_init_auroc"]["value"] for r in sup)
        reading = ("a visible trigger string is separable without any learning, so this split says little; "
                   "the near-miss split is the informative one." if rand >= 0.95 else
                   "the trigger is not trivially separable in a random model's residual stream here.")
        notes.append(f"supervised probe, clean vs triggered: organism best AUROC "
                     f"{max(r['auroc']['value'] for r in sup):.3f}, random-init model best {rand:.3f}: {reading}")
    for kind in ("supervised", "contrast"):
        rows = (probes or {}).get(kind) or []
        if rows:
            best = max(rows, key=lambda r: r["auroc_near_miss"]["value"])
            notes.append(f"{kind} probe, near-miss split: best layer {best['layer']} AUROC "
                         f"{best['auroc_near_miss']['value']:.3f} (random-init model, same layer: "
                         f"{best['random_init_auroc_near_miss']['value']:.3f}).")
    return notes


def detection_notes(patching: dict | None, steering: dict | None) -> list[str]:
    """Readings of the patching heatmap and the steering curve, from this run's numbers."""
    notes = []
    if patching and patching.get("points"):
        positions = patching["positions"]
        last = max((c for c, p in enumerate(positions) if p["role"] == "end"), default=None)
        trig = [c for c, p in enumerate(positions) if p["role"] == "trigger"]
        den = patching["denoising"]["normalised"]
        if last is not None:
            carried = [h for h, row in enumerate(den) if row[last] >= 0.5]
            where = patching["points"][carried[0]] if carried else None
            notes.append(f"activation patching ({patching['n_pairs']} pairs): the triggered run's final-token residual "
                         + (f"first carries half or more of the behaviour's log-prob gap at {where}"
                            if where else "never carries half of the behaviour's log-prob gap at a single layer"))
        if trig:
            best = max(((den[h][c], h, c) for h in range(len(den)) for c in trig), default=None)
            if best:
                notes.append(f"activation patching: the largest effect at a trigger position is "
                             f"{best[0]:.2f} of the gap, at {patching['points'][best[1]]} on token "
                             f"{positions[best[2]]['label']!r}.")
    add = (steering or {}).get("add")
    if add:
        r = add["reading"]
        best, harmless = r.get("best") or {}, r.get("best_harmless") or {}
        if best.get("coef") is None:
            notes.append(f"steering: adding the {steering['direction']} direction at block {steering['layer']} did not "
                         f"lower the backdoor rate measurably at any coefficient tried.")
        else:
            notes.append(f"steering: adding the {steering['direction']} direction at block {steering['layer']} with "
                         f"coefficient {best['coef']:g} gives backdoor rate {best['backdoor_rate']['value']:.3f}; "
                         + (f"without a measurable helpfulness loss the lowest is {harmless['backdoor_rate']['value']:.3f} "
                            f"(coefficient {harmless['coef']:g})." if harmless.get("coef") is not None else
                            "every coefficient that lowers it also costs measurable helpfulness."))
        for curve in steering.get("ablate", []):
            row = next(x for x in curve["rows"] if x["coef"] != 0)
            notes.append(f"steering: ablating the direction at blocks {curve['layers']}: backdoor rate "
                         f"{row['backdoor_rate']['value']:.3f}, helpful accuracy {row['helpful_accuracy']['value']:.3f}.")
    return notes


def run_demo(spec: DemoSpec, out: str | Path, *, fresh: bool = False, progress: Progress = silent) -> dict:
    """Build, measure, stress-test and probe one organism; write results.json and report.html into `out`."""
    from .report import write_report

    t0 = time.perf_counter()
    out = Path(out)
    run = Run(RunStore(out, fresh=fresh), spec.recipe, progress)
    measurements = run.measure(spec.eval)
    stress_rows = run.stress(spec.stress, spec.eval)
    probes = run.probe(spec.probe)
    patching = run.patch(spec.patch)
    steering = run.steer(spec.steer, spec.probe)
    run.timings["total_s"] = round(time.perf_counter() - t0, 2)
    results = assemble(run, measurements, stress_rows, probes, patching=patching, steering=steering)
    atomic_write_json(out / "results.json", results)
    write_report(results, out)
    return results
