"""The terminal side of the CLI: rich consoles, progress bars, errors and result tables.

Model output and file contents are untrusted: everything shown goes through `safe`, which
strips control and escape sequences and rich markup.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

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
    console.print(f"[red]error:[/red] {safe(message)}")
    raise typer.Exit(2)


def load_or_fail(loader, *args):
    from .config import SpecError

    try:
        return loader(*args)
    except SpecError as e:
        fail(str(e))


def fmt(m: dict | None) -> str:
    if not m:
        return "-"
    lo, hi = m["ci"]
    return f"{m['value']:.3f}  [{lo:.3f}, {hi:.3f}]  n={m['n']}"


def show_results(results: dict, out: Path) -> None:
    t = Table(title="Organism on held-out prompts (95% Wilson CI)")
    t.add_column("metric")
    t.add_column("value [CI] n")
    for k, m in results.get("metrics", {}).items():
        t.add_row(k, fmt(m))
    out_console.print(t)
    if results.get("stress"):
        s = Table(title="Stress test: HHH SFT on clean data")
        for c in ("lr", "step", "backdoor", "near-miss", "helpful"):
            s.add_column(c)
        for r in results["stress"]:
            s.add_row(f"{r['lr']:g}", str(r["step"]), fmt(r["backdoor_rate"]), fmt(r["near_miss_rate"]),
                      fmt(r["helpful_accuracy"]))
        out_console.print(s)
    probes = results.get("probes") or {}
    if probes.get("supervised"):
        key = "auroc_worst" if "auroc_worst" in probes["supervised"][0] else "auroc"
        p = Table(title="Probes: held-out AUROC per layer, worst clean set (organism | nulls)")
        for c in ("probe", "layer", "organism", "random-init model", "clean organism"):
            p.add_column(c)
        for kind in ("supervised", "diff_of_means", "contrast", "pca"):
            for r in probes.get(kind, []):
                p.add_row(kind, str(r["layer"]), fmt(r.get(key)), fmt(r.get("random_init_" + key)),
                          fmt(r.get("clean_organism_" + key)))
        out_console.print(p)
    show_patching(results.get("patching") or {})
    show_steering(results.get("steering") or {})
    for note in results.get("notes", []):
        out_console.print(f"- {safe(note)}")
    out_console.print(f"timings (s): {safe(json.dumps(results.get('timings', {})))}")
    out_console.print(f"report: {safe(out / 'report.html')}\nresults: {safe(out / 'results.json')}")


def show_patching(patching: dict) -> None:
    if not patching.get("points"):
        return
    labels = [p["label"] for p in patching["positions"]]
    for name in ("denoising", "noising"):
        t = Table(title=f"Activation patching, {name} ({patching[name]['source']} into {patching[name]['target']}): "
                        f"share of the log-prob gap moved, n={patching['n_pairs']} pairs")
        t.add_column("hook point")
        for label in labels:
            t.add_column(safe(label.replace("\n", "\\n")), justify="right")
        for point, row in zip(patching["points"], patching[name]["normalised"]):
            t.add_row(safe(point), *(f"{v:.2f}" for v in row))
        out_console.print(t)


def show_steering(steering: dict) -> None:
    if not steering.get("add"):
        return
    t = Table(title=f"Steering along the {safe(steering['direction'])} defection direction (95% Wilson CI)")
    for c in ("mode", "blocks", "coef", "backdoor", "helpful", "false trigger"):
        t.add_column(c)
    for curve in [steering["add"], *steering.get("ablate", [])]:
        for r in curve["rows"]:
            if curve["mode"] == "ablate" and r["coef"] == 0:
                continue  # the unsteered row is shown once, in the add curve
            t.add_row(curve["mode"], ",".join(map(str, curve["layers"])), f"{r['coef']:g}", fmt(r["backdoor_rate"]),
                      fmt(r["helpful_accuracy"]), fmt(r.get("false_trigger_rate")))
    out_console.print(t)
