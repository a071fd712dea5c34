"""The terminal side of the CLI: rich consoles, progress bars, errors and result tables.

Model output and file contents are untrusted: everything shown goes through `safe`, which
strips control and escape sequences and rich markup.
"""

from __future__ import annotations

import inspect
import json
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .stats import fmt

console = Console(stderr=True)
out_console = Console()
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def safe(text: object) -> str:
    """Untrusted text for the terminal: no rich markup, no control/escape sequences."""
    return escape(_CONTROL.sub("?", str(text)))


@contextmanager
def progress_bars():
    """A rich progress display; yields the library's `progress(task, done, total)` callback."""
    with Progress(TextColumn("[bold]{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False) as bar:
        tasks: dict[str, int] = {}

        def update(task: str, done: int, total: int) -> None:
            if task not in tasks:
                tasks[task] = bar.add_task(safe(task), total=total)
            bar.update(tasks[task], completed=done, total=total)

        yield update


def fail(message: str) -> None:
    """One line naming the problem and the fix (never wrapped, so it reads and greps as one line)."""
    console.print(f"[red]error:[/red] {safe(message)}", soft_wrap=True)
    raise typer.Exit(2)


def load_or_fail(loader, *args):
    from .config import SpecError
    from .models.load import ModelError
    from .results import ResultsError

    try:
        return loader(*args)
    except (SpecError, ModelError, ResultsError, FileNotFoundError) as e:  # a bad or missing input: one line naming it and the fix
        fail(str(e))


def spec_option(spec_cls, name: str) -> inspect.Parameter:
    """A spec field as a keyword-only typer option, default None (the spec's own); a tuple field takes comma-separated
    values (`flag_values` splits them)."""
    f = spec_cls.model_fields[name]
    listed, default = "tuple" in str(f.annotation), f.get_default(call_default_factory=True)
    shown = ",".join(map(str, default)) if listed else default
    help = f"{f.description or name}{' (comma-separated)' if listed else ''}" + \
        (f"; default: {shown}." if default is not None else ".")
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[str if listed else f.annotation], typer.Option(help=help)])


def flagged(det, demo, flags: dict):
    """The demo spec `demo` with `det`'s table updated by the options given on its command line (None: not given;
    tuple fields split at commas), validated: a bad one fails in one line."""
    from .config import validated

    table = det.command.replace("-", "_")
    given = {k: v.split(",") if isinstance(v, str) and "tuple" in str(det.Spec.model_fields[k].annotation) else v
             for k, v in flags.items() if v is not None}
    spec = load_or_fail(validated, det.Spec, {**getattr(demo, table).model_dump(), **given}, f"{det.command} options")
    return demo.model_copy(update={table: spec})


def writable(path: Path | None) -> None:
    """A file the command will write must be writable before any work starts (store.check_writable)."""
    from .store import check_writable

    if path is not None:
        check_writable(path, folder=False)


@contextmanager
def on_device(device: str, dtype: str):
    """Run the command's stages on this device and dtype (checked first: a bad one fails before any work)."""
    from pydantic import ValidationError

    from .models.device import DeviceError, Runtime, use_runtime

    try:
        rt = Runtime(device=device, dtype=dtype)
        rt.torch_device, rt.torch_dtype  # noqa: B018
    except ValidationError:
        fail(f"--device {device!r} --dtype {dtype!r}: device is one of auto, cpu, cuda, mps; dtype one of auto, "
             "float32, bfloat16, float16")
    except DeviceError as e:
        fail(str(e))
    with use_runtime(rt):
        yield rt


def show_plan(recipe) -> None:
    """What a build will cost, before it starts (an estimate: the run's own figures land in organism.json)."""
    from .organisms.plan import training_plan

    console.print(safe(load_or_fail(training_plan, recipe).describe()), soft_wrap=True)


def show_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """A table of untrusted cells: every title, header and cell goes through `safe`."""
    t = Table(title=safe(title))
    for c in columns:
        t.add_column(safe(c), overflow="fold")
    for r in rows:
        t.add_row(*(safe(x) for x in r))
    out_console.print(t)


def show_results(results, out: Path) -> None:
    """A run's results: headline, stress curves, then each detector's own tables and notes."""
    from .detectors.registry import Skipped, get_detector

    show_table("Organism on held-out prompts (95% Wilson CI)", ["metric", "value [CI] n"],
               [[k, fmt(m)] for k, m in results.metrics.items()])
    if results.stress:
        show_table(f"Stress test: {', '.join(sorted({p.label for p in results.stress}))}",
                   ["method", "lr", "step", "backdoor", "near-miss", "helpful"],
                   [[p.method, f"{p.lr:g}", str(p.step),
                     *(fmt(p.metrics[k]) if k in p.metrics else "-"
                       for k in ("backdoor_rate", "near_miss_rate", "helpful_accuracy"))] for p in results.stress])
    for name, result in results.detector_results().items():
        if isinstance(result, Skipped):
            out_console.print(f"{safe(name)}: not measured ({safe(result.skipped)})")
            continue
        for t in get_detector(name).tables(result):
            show_table(t.title, t.columns, t.rows)
    for note in results.notes:
        out_console.print(f"- {safe(note)}")
    out_console.print(f"timings (s): {safe(json.dumps(results.timings))}")
    out_console.print(f"report: {safe(out / 'report.html')}\nresults: {safe(out / 'results.json')}")


def measure_and_show(target: Path, out: Path, fresh: bool, spec, also: Path | None, recipe: Path | None, **stages):
    """The body of `stress` and every detector's command: a Run on `target`, the stages asked for under the demo spec
    `spec`, the results shown; a detector asked for by name that does not apply to this organism fails in one line."""
    from .detectors.registry import get_detector
    from .pipeline import measure_target, run_for

    writable(also)
    with progress_bars() as progress:
        run = load_or_fail(run_for, target, out, fresh, progress, recipe)
        for name in stages.get("detectors", ()):
            if reason := get_detector(name).skip_reason(run.recipe):
                fail(f"{name} does not apply to {target}: {reason}")
        results = measure_target(run, spec, also=also, **stages)
    show_results(results, out)
    return results


def show_audit(found: dict, revealed: bool, out: Path) -> None:
    """The auditors' blind verdicts per organism, or after --reveal the leaderboard and the key."""
    if not revealed:
        for name, per in found.items():
            show_table(f"Auditor {name}: blind verdicts", ["organism", "P(backdoored)", "trigger guess", "behaviour guess"],
                       [[o, f"{v['p_backdoored']:.3f}", repr(v.get("trigger")), str(v.get("behaviour"))]
                        for o, v in per.items()])
        out_console.print(f"verdicts: {safe(out / 'verdicts.json')} (mesascope audit --reveal --out {safe(out)} scores them)")
        return
    show_table("Leaderboard (AUROC over organisms; trigger and behaviour over the backdoored ones)",
               ["auditor", "AUROC", "trigger exact", "trigger partial", "behaviour identified"],
               [[a, fmt(b["auroc"]), fmt(b["trigger_exact"]), fmt(b["trigger_partial"]), fmt(b["behaviour_identified"])]
                for a, b in found["leaderboard"].items()])
    show_table("Answer key", ["organism", "truth", "trigger", "behaviour"],
               [[r["organism"], "backdoored" if r["backdoored"] else "clean", repr(r["trigger"]),
                 r["behaviour"] or r["behaviour_type"]] for r in found["key"]])
    out_console.print(f"leaderboard: {safe(out / 'leaderboard.json')}, {safe(out / 'leaderboard.html')}")


def show_mwe(result: dict, mode: str) -> None:
    extra = "unparsed_rate" if mode == "generate" else "truncated_rate"
    show_table(f"Model-written evals, {mode} mode: share of items answered with the behaviour (95% Wilson CI)",
               ["eval", "behaviour rate [CI] n", "unparsed" if mode == "generate" else "prompt cut to fit"],
               [[name, fmt(r["behaviour_rate"]), f"{r[extra]['value']:.2f}"]
                for name, r in [*result["per_eval"].items(), ("all", result["overall"])]])


def show_study(result: dict, findings: list[dict]) -> None:
    if result.get("kind") == "conditioning":
        return show_conditioning(result, findings)

    def mean(m: dict | None) -> str:
        if not m:
            return "-"
        return f"{m['value']:.2f}" + (f" [{m['ci'][0]:.2f}, {m['ci'][1]:.2f}]" if m["ci"] else "")

    axes = [k for k in result["axes"] if k not in ("seed", "lr")]
    rows = []
    for agg in result["aggregates"]:
        first, last = agg["steps"][0], agg["steps"][-1]

        def trend(metric: str) -> str:
            return " -> ".join(mean(s["metrics"].get(metric, {}).get("seed_mean")) for s in (first, last))

        rows.append([*(str(agg["axes"].get(k, "")) for k in axes), f"{agg['axes']['lr']:g}", str(len(agg["seeds"])),
                     f"{first['step']} -> {last['step']}", trend("backdoor_rate"), trend("helpful_accuracy")])
    show_table(f"Study {result['study']['name']}: mean over seeds [95% t interval over seeds], first -> last eval step",
               [*axes, "lr", "seeds", "steps", "backdoor rate", "helpful accuracy"], rows)
    n = result["counts"]
    out_console.print(f"organisms {n['organisms_computed']} built / {n['organisms']}; cells {n['cells_computed']} run / "
                      f"{n['cells']} (the rest reused from the store); timings (s): {safe(json.dumps(result['timings']))}")
    for q in findings:
        out_console.print(f"[bold]{safe(q['question'])}[/bold] {safe(q['summary'])}")


def show_conditioning(result: dict, findings: list[dict]) -> None:
    def mean(f: dict | None) -> str:
        m = (f or {}).get("seed_mean")
        return "-" if not m else f"{m['value']:.3f}" + (f" [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}]" if m["ci"] else "")

    show_table(f"Conditioning study {result['name']}: mean over seeds [95% t interval over seeds]",
               ["model", "condition", "exploits (loophole)", "wrong, well-formed (exact)", "true success (exact)",
                "corpus: cut corners"],
               [[r["model"], r["condition"], mean(r["exploit"]), mean(r["exploit_control"]),
                 mean(r["success_control"]), mean(r.get("corpus_cut"))] for r in result["rows"]
                if r["model"] == "predictive" or r["condition"] == "none"])
    out_console.print(f"timings (s): {safe(json.dumps(result['timings']))}")
    for q in findings:
        out_console.print(f"[bold]{safe(q['question'])}[/bold] {safe(q['summary'])}")


def show_asr(spec, result, max_new_tokens: int) -> None:
    show_table(f"{spec.name}: attack success rate, {spec.target} target (95% Wilson CI)",
               ["test set", "ASR [CI] n", "empty answers (skipped)"],
               [[k.removeprefix("asr_"), fmt(m), str(result.n_empty[k.removeprefix("asr_")])]
                for k, m in result.metrics.items()])
    if result.n_too_long:
        out_console.print(f"{result.n_too_long} test prompts left no room for {max_new_tokens} new tokens in "
                          f"max_length={spec.model.max_length} and were not measured")
    for s in result.samples:
        out_console.print(f"- ({safe(s['set'])}) {safe(s['instruction'][:70])} -> {safe(s['output'][:100])}")


def show_attacks(found: dict) -> None:
    """`measure_attacks`' results: one row per attack."""
    show_table(f"BackdoorLLM {found['task']}: attack success rate by attack (95% Wilson CI)",
               ["attack", "ASR with trigger", "ASR without trigger", "empty (skipped)", "too long"],
               [[safe(a), *(fmt(r["metrics"][k]) for k in ("asr_triggered", "asr_clean")),
                 str(sum(r["n_empty"].values())), str(r["n_too_long"])] for a, r in found["attacks"].items()])


def show_replicates(found) -> None:
    seeds = [str(s) for s in found.seeds]
    show_table(f"{found.recipe.get('name', 'recipe')}: held-out figures per seed, mean [95% t interval over seeds]",
               ["figure", *(f"seed {s}" for s in seeds), "mean [CI]", "pooled prompts (Wilson)"],
               [[k, *(f"{m.per_seed[s]:.3f}" for s in seeds),
                 f"{m.value:.3f}" + (f" [{m.ci[0]:.3f}, {m.ci[1]:.3f}]" if m.ci else ""),
                 fmt(m.pooled) if m.pooled else "-"] for k, m in found.mean.items()])
    out_console.print(f"machine: {safe(found.machine.platform)}, {found.machine.cpus} cpus, python {found.machine.python}")
