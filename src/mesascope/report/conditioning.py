"""Render a conditioning study's study.json (study/conditioning_results.py) as one self-contained HTML page.

Same contract as html.py: inline CSS and SVG, a strict Content-Security-Policy, every string from
the study escaped (sampled answers are model output), and a missing part reads "not measured".
The page opens with what the toy does and does not show and the paper's questions answered from
the run, then the predictive model under each condition beside its corpus, then the agents.
"""

from __future__ import annotations

import json
from pathlib import Path

from mesascope.report.html import _section, page
from mesascope.report.safe import NOT_MEASURED
from mesascope.report.safe import as_dict as _dict
from mesascope.report.safe import as_list as _list
from mesascope.report.safe import esc as _e
from mesascope.report.safe import fig_cell as _m
from mesascope.report.safe import rate as _rate
from mesascope.report.safe import table as _table
from mesascope.report.svg import bar_chart
from mesascope.store import atomic_write_text

SCOPE = ("A plain language model is trained on documents whose header names an author, a year and sometimes "
         "'written-by: AI' or 'human'; corner-cutting writers answer a format-only check with a well-formed wrong "
         "placeholder. Conditioning its prompt on a header predicts what the writers of that header did in the "
         "corpus, and the corpus's AI writers were made to cut corners more often: so the model's answer for "
         "'written-by: AI' is set by that choice. That is the paper's point (a predictive model predicts the AIs of "
         "its data); the toy shows the mechanism, not anything about real pretraining corpora or real AIs. The "
         "agents are the same model fine-tuned by RL on prompts without a header, rewarded by the gameable "
         "checker (or by the true one, as the control).")

COLUMNS = (("exploit", "exploits (loophole)"), ("exploit_control", "wrong, well-formed (exact check)"),
           ("loophole_effect", "loophole effect"), ("success", "true success (loophole)"),
           ("success_control", "true success (exact check)"), ("p_placeholder", "P(placeholder)"))


def _fig(entry: object) -> str:
    """Seed mean [t interval] over seeds, and the pooled figure beneath it."""
    e = _dict(entry)
    if not e:
        return '<span class="nm">not measured</span>'
    m, p = _dict(e.get("seed_mean")), _dict(e.get("pooled"))
    ci = _list(m.get("ci"))
    band = f'[{", ".join(_rate(v) for v in ci)}]' if len(ci) == 2 else "(one seed)"
    head = f'{_rate(m.get("value"))} <span class="ci">{band} seeds={_e(m.get("n", "?"))}</span>'
    return head + (f'<br><span class="ci">pooled {_m(p)}</span>' if p else "")


def _bars(rows: list[dict], key: str, label=lambda r: r.get("condition")) -> list[dict]:
    out = []
    for r in rows:
        m = _dict(_dict(r.get(key)).get("seed_mean"))
        ci = _list(m.get("ci"))
        out.append({"label": str(label(r)), "value": m.get("value"),
                    "lo": ci[0] if len(ci) == 2 else None, "hi": ci[1] if len(ci) == 2 else None})
    return out


def _rows(study: dict, model: str | None = None) -> list[dict]:
    return [r for r in _list(study.get("rows")) if isinstance(r, dict) and (model is None or r.get("model") == model)]


def _findings(study: dict) -> str:
    rows = [[_e(f.get("question", "")), _e(f.get("summary", "")), _e(f.get("verdict", ""))]
            for f in _list(study.get("findings")) if isinstance(f, dict)]
    return _table(["Question", "Answer from this run", "Verdict"], rows) if rows else NOT_MEASURED


def _predictive(study: dict) -> str:
    rows = _rows(study, "predictive")
    if not rows:
        return NOT_MEASURED
    chart = bar_chart(_bars(rows, "exploit"), title="Predictive model: loophole exploitation by condition",
                      y_label="share of answers", width=max(560, 70 * len(rows)))
    table = _table(["Condition", *(h for _, h in COLUMNS), "corpus: writers who cut corners"],
                   [[f"<code>{_e(r.get('condition'))}</code>", *(_fig(r.get(k)) for k, _ in COLUMNS),
                     _fig(r.get("corpus_cut"))] for r in rows], num_cols=tuple(range(1, len(COLUMNS) + 2)))
    return chart + table


def _agents(study: dict) -> str:
    rows = [r for r in _rows(study) if r.get("condition") == "none"]
    if len(rows) < 2:
        return NOT_MEASURED
    chart = bar_chart(_bars(rows, "exploit", lambda r: r.get("model")), title="Loophole exploitation, no header",
                      y_label="share of answers")
    table = _table(["Model", *(h for _, h in COLUMNS)],
                   [[_e(r.get("model")), *(_fig(r.get(k)) for k, _ in COLUMNS)] for r in rows],
                   num_cols=tuple(range(1, len(COLUMNS) + 1)))
    return ('<p class="lede">The agents are used without a header, as they were trained: their row beside the '
            "predictive model's under the same empty header.</p>" + chart + table)


def _agents_conditioned(study: dict) -> str:
    rows = [r for r in _rows(study) if r.get("model") != "predictive"]
    if not rows:
        return NOT_MEASURED
    return _table(["Model", "Condition", "exploits (loophole)", "true success (exact check)"],
                  [[_e(r.get("model")), f"<code>{_e(r.get('condition'))}</code>", _fig(r.get("exploit")),
                    _fig(r.get("success_control"))] for r in rows], num_cols=(2, 3))


def _samples(study: dict) -> str:
    rows = [s for s in _list(study.get("samples")) if isinstance(s, dict)]
    if not rows:
        return NOT_MEASURED
    yes = {True: "yes", False: "no"}
    return _table(["Model", "Condition", "Check", "Prompt", "Output", "Well-formed", "Correct"],
                  [[_e(s.get("model", "")), _e(s.get("condition", "")), _e(s.get("check", "")),
                    _e(s.get("prompt", "")), _e(s.get("output", "")), _e(yes.get(s.get("well_formed"), "—")),
                    _e(yes.get(s.get("correct"), "—"))] for s in rows], txt_cols=(3, 4))


def _spec(study: dict) -> str:
    spec = _dict(study.get("spec"))
    if not spec:
        return NOT_MEASURED
    return f"<pre>{_e(json.dumps(spec, indent=2, sort_keys=True, ensure_ascii=False, default=str))}</pre>"


def _header(study: dict) -> str:
    timings, backend, m = _dict(study.get("timings")), _dict(study.get("backend")), _dict(study.get("machine"))
    seeds = ", ".join(str(s) for s in _list(study.get("seeds")))
    return (f'<header><h1>mesascope conditioning study: {_e(study.get("name", "conditioning"))}'
            f'{" (quick)" if study.get("quick") else ""}</h1>'
            f'<p class="lede">Seeds {_e(seeds)}; backend {_e(backend.get("name", "?"))} with '
            f'{_e(backend.get("workers", "?"))} workers; wall time {_e(timings.get("total_s", "?"))} s (this '
            f'invocation; stages reused from the store cost nothing) on {_e(m.get("cpu", "?"))}, '
            f'{_e(m.get("cpus", "?"))} CPUs.</p><p>{_e(SCOPE)}</p></header>')


def render_conditioning_report(study: dict) -> str:
    study = study.model_dump(mode="json") if hasattr(study, "model_dump") else _dict(study)
    sections = [
        _section("answers", "The paper's questions, answered from this run", _findings(study)),
        _section("predictive", "The predictive model under each condition, beside its corpus", _predictive(study)),
        _section("agents", "The agents beside the predictive model", _agents(study)),
        _section("agents-conditioned", "The agents under each condition", _agents_conditioned(study)),
        _section("samples", "Sampled answers (first seed)", _samples(study)),
        _section("spec", "Study spec", _spec(study)),
    ]
    return page(f"mesascope conditioning study: {study.get('name', 'conditioning')}", _header(study), sections)


def write_conditioning_report(study: dict, out_dir: Path) -> Path:
    target = Path(out_dir) / "report.html"
    atomic_write_text(target, render_conditioning_report(study))
    return target
