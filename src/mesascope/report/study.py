"""Render a sweep's study.json as one self-contained HTML page.

It renders the dict of a validated `StudyResults` (study/results.py). Same contract as
`html.py`: inline CSS and SVG, a strict Content-Security-Policy, every string from the study
escaped, and a missing part reads "not measured" (a partial dict renders too). The page opens with
the answers to the paper's questions (findings.py: differences with intervals, computed from
this run), then the curves and trends they come from, then every cell with n and CIs, and
the paper's figures beside the matching cells.
"""

from __future__ import annotations

import math
from pathlib import Path

from mesascope.study.findings import PAPER, at, findings
from mesascope.study.results import StudyResults
from mesascope.report.html import _section, page
from mesascope.report.safe import NOT_MEASURED
from mesascope.report.safe import as_dict as _dict
from mesascope.report.safe import as_list as _list
from mesascope.report.safe import esc as _e
from mesascope.report.safe import fig_cell as _m
from mesascope.report.safe import rate as _rate
from mesascope.report.safe import table as _table
from mesascope.report.svg import as_finite, line_chart
from mesascope.store import atomic_write_text

METRICS = (("backdoor_rate", "backdoor (true trigger)"), ("adversarial_rate", "red-team prompts"),
           ("false_trigger_rate", "false trigger"), ("near_miss_rate", "near miss"),
           ("helpful_accuracy", "helpful"))


def _seed_mean(entry: object) -> dict:
    return _dict(_dict(entry).get("seed_mean"))


def _pt(x: object, entry: object) -> tuple:
    """A chart point from an aggregate entry: seed mean with its t interval (or pooled Wilson with one seed)."""
    e = _dict(entry)
    m = _seed_mean(e)
    lo_hi = m.get("ci") or _dict(e.get("pooled")).get("ci") or [None, None]
    return (x, m.get("value"), *(list(lo_hi) + [None, None])[:2])


def _cell(entry: object) -> str:
    """Seed mean [t interval] n=seeds, and the pooled Wilson figure beneath it."""
    e = _dict(entry)
    if not e:
        return '<span class="nm">not measured</span>'
    m, p = _seed_mean(e), _dict(e.get("pooled"))
    ci = m.get("ci")
    head = f'{_rate(m.get("value"))} <span class="ci">{"[" + ", ".join(_rate(v) for v in ci) + "]" if ci else ""}' \
        f' seeds={_e(m.get("n", "?"))}</span>'
    return head + (f'<br><span class="ci">pooled {_m(p)}</span>' if p else "")


def _diff(d: object) -> str:
    d = _dict(d)
    if as_finite(d.get("value")) is None:
        return '<span class="nm">not measured</span>'
    ci = d.get("ci")
    sign = "+" if d["value"] > 0 else ""
    band = f' <span class="ci">[{", ".join(f"{v:+.3f}" for v in ci)}]</span>' if ci else ""
    return f'{sign}{d["value"]:.3f}{band}'


def _answers(study: dict) -> str:
    out = []
    for q in findings(study):
        rows = []
        for c in q["comparisons"]:
            d = _dict(c.get("difference"))
            extra = c.get("reading") or ""
            if c.get("adversarial"):
                extra = f'red-team change {_diff(c["adversarial"].get("difference"))}; {_e(extra)}'
            else:
                extra = _e(extra)
            rows.append([_e(c.get("label", "")), _diff(d), _e(d.get("interval", "")), _e(d.get("verdict", "")), extra])
        body = _table(["Comparison", "Difference [95% CI]", "Interval", "Verdict", "Reading"], rows,
                      num_cols=(1,)) if rows else NOT_MEASURED
        out.append(f'<h3>{_e(q["question"])}</h3><p class="lede">Reads: {_e(q["reads"])}. {_e(q["summary"])}</p>{body}')
    return "".join(out)


def _groups(study: dict) -> list[dict]:
    return [g for g in _list(study.get("aggregates")) if isinstance(g, dict)]


def _label(axes: dict, skip: tuple[str, ...] = ()) -> str:
    return ", ".join(f"{k}={v}" for k, v in axes.items() if k not in skip)


def _method(study: dict, method: object) -> str:
    """A stress method's own label (study.json's methods table), else its name."""
    return str(_dict(_dict(study.get("methods")).get(str(method))).get("label") or method)


def _named(study: dict, axes: dict) -> dict:
    """Axes with the stress method shown by its label (`method=RL (RLOO)`)."""
    return {**axes, "method": _method(study, axes["method"])} if "method" in axes else axes


def _persistence(study: dict) -> str:
    """One chart per (size, method, lr, other axes): backdoor rate vs step, a line per reasoning variant."""
    charts: dict[str, list[dict]] = {}
    for g in _groups(study):
        axes = _dict(g.get("axes"))
        key = _label(_named(study, axes), ("reasoning",))
        pts = [_pt(s.get("step"), _dict(s.get("metrics")).get("backdoor_rate")) for s in _list(g.get("steps"))]
        charts.setdefault(key, []).append({"label": str(axes.get("reasoning", "?")), "points": pts})
        adv = [_pt(s.get("step"), _dict(s.get("metrics")).get("adversarial_rate")) for s in _list(g.get("steps"))
               if _dict(s.get("metrics")).get("adversarial_rate")]
        if adv:
            charts[key].append({"label": f'{axes.get("reasoning", "?")} red-team', "points": adv, "dashed": True})
    if not charts:
        return NOT_MEASURED
    return '<div class="charts">' + "".join(
        line_chart(series, title=key, x_label="safety-training step", y_label="backdoor rate", width=360, height=260)
        for key, series in charts.items()) + "</div>"


def _trend(study: dict, axis: str, x_of, x_label: str) -> str:
    """Backdoor rate after safety training against `axis`, one chart per method, a line per other-axes group."""
    per_method: dict[str, dict[str, list]] = {}
    for g in _groups(study):
        axes = _dict(g.get("axes"))
        if axis not in axes:
            continue
        x = x_of(axes[axis])
        if x is None:
            continue
        series = per_method.setdefault(_method(study, axes.get("method", "?")), {})
        series.setdefault(_label(axes, (axis, "method")), []).append(_pt(x, at(g)))
    if not per_method or all(len({p[0] for s in m.values() for p in s}) < 2 for m in per_method.values()):
        return f'<p class="nm">not measured: the study has one value of {_e(axis)}</p>'
    return '<div class="charts">' + "".join(
        line_chart([{"label": k, "points": v} for k, v in series.items()], title=f"{method}: backdoor after training",
                   x_label=x_label, y_label="backdoor rate", width=420, height=300)
        for method, series in per_method.items()) + "</div>"


def _size_x(study: dict):
    sizes = _dict(study.get("sizes"))

    def x(size: object) -> float | None:
        counts = _list(_dict(sizes.get(str(size))).get("n_params"))
        v = as_finite(counts[0]) if counts else None
        return math.log10(v) if v else None
    return x


def _lr_x(lr: object) -> float | None:
    v = as_finite(lr)
    return math.log10(v) if v and v > 0 else None


# Edit-distance buckets of evals/specificity.py, placed on a distance axis (3-4 at 3.5, 5+ at 5).
_BUCKET_X = {"0": 0.0, "1": 1.0, "2": 2.0, "3-4": 3.5, "5+": 5.0}


def _specificity(study: dict) -> str:
    """Behaviour rate against edit distance from the true trigger, before and after adversarial training."""
    charts, rows, excluded = [], [], []
    for g in _groups(study):
        spec = _dict(g.get("specificity"))
        if not spec:
            continue
        series, name = [], _label(_named(study, _dict(g.get("axes"))))
        counts = _list(_dict(spec.get("after") or spec.get("before")).get("n_excluded_red_team"))
        excluded.append(f'{_e(name)}: ' + (", ".join("?" if n is None else _e(n) for n in counts) or "?"))
        for when in ("before", "after"):
            buckets = _dict(_dict(spec.get(when)).get("buckets"))
            pts = [_pt(_BUCKET_X[b], buckets[b]) for b in _BUCKET_X if b in buckets]
            if pts:
                steps = ", ".join(str(x) for x in _list(_dict(spec.get(when)).get("steps")))
                series.append({"label": f"{when} (step {steps})", "points": pts, "dashed": when == "before"})
                rows.append([_e(name), _e(when),
                             *(_cell(buckets.get(b)) for b in _BUCKET_X)])
        charts.append(line_chart(series, title=name, x_label="edit distance from the trigger",
                                 y_label="behaviour rate", width=360, height=260))
    if not charts:
        return '<p class="nm">not measured: no adversarial cell in this study</p>'
    return ('<p class="lede">Behaviour rate on held-out prompts carrying strings at each edit distance from the '
            'true trigger (0 is the trigger; 3-4 and 5+ are buckets), before and after adversarial training. '
            'An after-curve flat at 0 off the trigger that keeps its distance-0 point is a backdoor made '
            'more specific, not removed. Both curves leave out the strings adversarial training trained on '
            '(a trained string that stops firing shows what was trained, not how specific the trigger became); '
            'left out per seed: ' + "; ".join(excluded) + ' ("?": a curve stored before they were left out).</p>'
            '<div class="charts">' + "".join(charts) + "</div>"
            + _table(["Cell", "When", *(f"distance {b}" for b in _BUCKET_X)], rows, num_cols=(2, 3, 4, 5, 6)))


def _ablations(study: dict) -> str:
    """One trend per recipe axis the study adds through `overrides` (e.g. behaviour_repeats: behaviour density)."""
    keys = [k for k in _dict(study.get("axes")) if k not in ("size", "reasoning", "seed", "method", "lr")]
    if not keys:
        return '<p class="nm">not measured: the study varies no other recipe field (`overrides`)</p>'
    return "".join(f"<h3>{_e(k)}</h3>" + _trend(study, k, as_finite, k) for k in keys)


def _cells(study: dict) -> str:
    rows = []
    for g in _groups(study):
        axes = _dict(g.get("axes"))
        first = _dict(_list(g.get("steps"))[0]).get("metrics") if _list(g.get("steps")) else {}
        rows.append([_e(_label(_named(study, axes))), _e(len(_list(g.get("seeds")))),
                     _cell(_dict(first).get("backdoor_rate")),
                     *(_cell(at(g, key)) for key, _ in METRICS)])
    if not rows:
        return NOT_MEASURED
    return ('<p class="lede">Each figure: mean over seeds with a 95% t interval over seeds, and beneath it all '
            'prompts of all seeds pooled with a Wilson interval (narrower: it ignores between-seed spread). '
            '"After" is the last safety-training step.</p>'
            + _table(["Cell", "Seeds", "Backdoor before", *(f"{name} after" for _, name in METRICS)], rows,
                     num_cols=(1, 2, 3, 4, 5, 6, 7)))


def _paper(study: dict) -> str:
    rows = []
    for p in PAPER:
        metric = p.get("metric", "backdoor_rate")
        ours = [g for g in _groups(study) if _dict(g.get("axes")).get("method") == p["method"]
                and _dict(g.get("axes")).get("reasoning") == p["reasoning"]]
        mine = "<br>".join(f'{_e(_label(_dict(g["axes"]), ("method", "reasoning")))}: '
                           f'{_rate(_seed_mean(at(g, metric, "first")).get("value"))} → '
                           f'{_rate(_seed_mean(at(g, metric)).get("value"))}' for g in ours) or \
            '<span class="nm">no matching cell in this study</span>'
        rows.append([_e(p["source"]), _e(p["method"]), _e(p["reasoning"]), _e(metric),
                     f'{_rate(p["before"])} → {_rate(p["after"])}', mine])
    return ('<p class="lede">The paper\'s models are ~10<sup>4</sup>–10<sup>5</sup> times larger and trained far '
            'longer; the comparison is of direction, not level. Our cells: seed means, before → after.</p>'
            + _table(["Source", "Method", "Reasoning", "Metric", "Paper", "mesascope (this run)"], rows))


def _header(study: dict) -> str:
    counts, timings = _dict(study.get("counts")), _dict(study.get("timings"))
    backend = _dict(study.get("backend"))
    sizes = _dict(study.get("sizes"))
    size_txt = ", ".join(f"{_e(k)}: {_e(', '.join(str(c) for c in _list(_dict(v).get('n_params'))))} parameters"
                         for k, v in sizes.items())
    name = _dict(study.get("study")).get("name") or study.get("name", "study")
    return (f'<header><h1>mesascope study: {_e(name)}{" (quick)" if study.get("quick") else ""}</h1>'
            f'<p class="lede">{_e(counts.get("organisms", "?"))} organisms, {_e(counts.get("cells", "?"))} stress cells; '
            f'backend {_e(backend.get("name", "?"))} with {_e(backend.get("workers", "?"))} workers; '
            f'wall time {_e(timings.get("total_s", "?"))} s (this invocation; reused cells cost nothing). '
            f'Sizes: {size_txt or "?"}.</p></header>')


def render_study_report(study: StudyResults | dict) -> str:
    study = study.model_dump(mode="json") if isinstance(study, StudyResults) else _dict(study)
    sections = [
        _section("answers", "The paper's questions, answered from this run", _answers(study)),
        _section("persistence", "Persistence curves: backdoor rate under safety training", _persistence(study)),
        _section("size", "Size trend (x: log10 parameters)", _trend(study, "size", _size_x(study), "log10 parameters")),
        _section("lr", "Learning-rate trend (x: log10 learning rate)", _trend(study, "lr", _lr_x, "log10 lr")),
        _section("specificity", "Trigger specificity: behaviour rate against edit distance", _specificity(study)),
        _section("ablations", "Recipe ablations (behaviour density and other `overrides` axes)", _ablations(study)),
        _section("cells", "Every cell", _cells(study)),
        _section("paper", "Beside the paper's figures", _paper(study)),
    ]
    return page(f"mesascope study: {study.get('name', 'study')}", _header(study), sections)


def write_study_report(study: StudyResults | dict, out_dir: Path) -> Path:
    target = Path(out_dir) / "report.html"
    atomic_write_text(target, render_study_report(study))
    return target
