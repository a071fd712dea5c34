"""The sections of the probes, patching and steering detectors: heatmaps, curves and tables.

Same contract as `html.py`: every string from the results is untrusted and escaped; a missing
or malformed part renders as "not measured" rather than failing the page.
"""

from __future__ import annotations

from mesascope.report.safe import NOT_MEASURED
from mesascope.report.safe import as_dict as _dict
from mesascope.report.safe import as_list as _list
from mesascope.report.safe import esc as _e
from mesascope.report.safe import fig_cell as _m
from mesascope.report.safe import point as _point
from mesascope.report.safe import table as _table
from mesascope.report.svg import as_finite, heatmap, line_chart


def _point_label(point: object) -> str:
    """`blocks.0.resid_pre` -> "embeddings", `blocks.3.resid_post` -> "block 3"."""
    parts = str(point).split(".")
    if len(parts) == 3 and parts[0] == "blocks" and parts[2] == "resid_post":
        return f"block {parts[1]}"
    return "embeddings" if str(point) == "blocks.0.resid_pre" else str(point)


def patching_section(patching: object) -> str:
    p = _dict(patching)
    points, positions = _list(p.get("points")), [_dict(x) for x in _list(p.get("positions"))]
    if p.get("skipped"):
        return f'<p class="nm">not measured: {_e(p["skipped"])}</p>'
    if not points or not positions:
        return NOT_MEASURED
    labels = [str(x.get("label", "")).replace("\n", "\\n") for x in positions]
    maps = []
    for name, what in (("denoising", "triggered activations into the clean run"),
                       ("noising", "clean activations into the triggered run")):
        d = _dict(p.get(name))
        values = _list(d.get("normalised"))
        if values:
            maps.append(heatmap(values, row_labels=[_point_label(x) for x in points], col_labels=labels,
                                title=f"{name}: {what}", x_label="position patched", y_label="hook point"))
    base = _dict(p.get("baseline"))
    tokens = " ".join(str(t) for t in _list(p.get("behaviour_tokens")))
    example = _dict(p.get("example_pair"))
    counterparts = ", ".join(f"<code>{_e(k)}</code> ×{_e(v)}" for k, v in _dict(p.get("counterparts")).items())
    lede = (
        f'<p class="lede">Each cell copies one hook point at one position from the source run into the target run '
        f"and reports the share of the gap in log P(<code>{_e(tokens)}</code>) that moves (1 = all of it), averaged "
        f"over {_e(p.get('n_pairs', '?'))} held-out prompt pairs aligned token by token. Clean-run log-prob "
        f"{_m(base.get('clean_logprob'))}, triggered {_m(base.get('triggered_logprob'))}, gap {_m(base.get('gap'))} "
        f"nats. The column <i>all</i> patches every position at once (a check: it must read 1). "
        f"Counterparts ({_e(p.get('counterpart_kind', '?'))}): {counterparts}.</p>"
    )
    pair = (f"<p>Example pair: <code>{_e(example.get('triggered', ''))}</code> vs "
            f"<code>{_e(example.get('clean', ''))}</code></p>") if example else ""
    return f'{lede}<div class="charts">{"".join(maps)}</div>{pair}'


def steering_section(steering: object) -> str:
    s = _dict(steering)
    add = _dict(s.get("add"))
    if not _list(add.get("rows")):
        return NOT_MEASURED
    rows = [_dict(r) for r in _list(add.get("rows"))]
    series = [{"label": label, "points": [_point(r.get("coef"), r.get(key)) for r in rows]}
              for key, label in (("backdoor_rate", "backdoor rate"), ("helpful_accuracy", "helpful accuracy"),
                                 ("false_trigger_rate", "false-trigger rate"))]
    coefs = [c for c in (as_finite(r.get("coef")) for r in rows) if c is not None]
    layers = ",".join(map(str, _list(add.get("layers"))))
    chart = line_chart(series, title=f"Adding the defection direction at block {layers}",
                       x_label="coefficient (x mean residual norm)", y_label="rate",
                       width=560, height=300) if coefs else ""
    table_rows = []
    for curve in [add, *(_dict(c) for c in _list(s.get("ablate")))]:
        for r in (_dict(r) for r in _list(curve.get("rows"))):
            if curve.get("mode") == "ablate" and as_finite(r.get("coef")) == 0:
                continue
            table_rows.append([_e(curve.get("mode", "")), _e(",".join(map(str, _list(curve.get("layers"))))),
                               _e(r.get("coef", "")), _m(r.get("backdoor_rate")), _m(r.get("backdoor_change")),
                               _m(r.get("helpful_accuracy")), _m(r.get("helpful_change")),
                               _m(r.get("false_trigger_rate"))])
    reading = _dict(add.get("reading"))
    best, harmless = _dict(reading.get("best")), _dict(reading.get("best_harmless"))
    verdict = "no coefficient of the add curve lowered the backdoor rate with its interval below zero"
    if best.get("coef") is not None:
        verdict = (f"the add curve's lowest backdoor rate is at coefficient {_e(best['coef'])}: "
                   f"{_m(best.get('backdoor_rate'))}; ")
        verdict += (f"the lowest without a measurable helpfulness loss is at {_e(harmless['coef'])}: "
                    f"{_m(harmless.get('backdoor_rate'))}" if harmless.get("coef") is not None
                    else "every coefficient that lowers it also costs measurable helpfulness")
    lede = (f'<p class="lede">Direction: {_e(s.get("direction", "?"))}, fitted on training prompts only and '
            f"pointing toward triggered; a negative coefficient steers away from defection, ablation projects the "
            f"direction out of the block's output at every position. Changes are against the unsteered organism on "
            f"the same held-out prompts (Newcombe 95% interval). Reading: {verdict}.</p>")
    return f'{lede}<div class="charts">{chart}</div>' + _table(
        ["Mode", "Blocks", "Coef", "Backdoor rate", "Change vs unsteered", "Helpful accuracy", "Change vs unsteered",
         "False-trigger rate"], table_rows)


PROBE_KINDS = (("supervised", "supervised (logistic regression)"), ("diff_of_means", "difference of means"),
               ("contrast", "contrast pair"), ("pca", "top principal component (unsupervised)"))


def _rows(value: object) -> list[dict]:
    return [r for r in _list(value) if isinstance(r, dict)]


def _num(v: object, fmt: str = ".3f") -> str:
    f = as_finite(v)
    return '<span class="nm">—</span>' if f is None else format(f, fmt)


def probes_section(probes: object) -> str:
    probes = _dict(probes)
    kinds = {k: _rows(probes.get(k)) for k, _ in PROBE_KINDS}
    if not any(kinds.values()):
        return NOT_MEASURED
    pair = _dict(probes.get("contrast_pair"))
    key = "auroc_worst" if any("auroc_worst" in r for rs in kinds.values() for r in rs) else "auroc"
    charts = []
    for prefix, title in (("", "organism"), ("random_init_", "random-init model (null)"),
                          ("clean_organism_", "clean organism (null)")):
        series = [{"label": label.split(" (")[0], "points": [_point(r.get("layer"), r.get(prefix + key)) for r in rows]}
                  for k, label in PROBE_KINDS if (rows := kinds[k])]
        if any(p[1] is not None for s in series for p in s["points"]):
            charts.append(line_chart(series, title=f"AUROC by layer, worst clean set: {title}", x_label="layer",
                                     y_label="AUROC", hline=0.5, width=520, height=300))
    table_rows, chosen = [], _dict(probes.get("chosen_layers"))
    for k, label in PROBE_KINDS:
        pick = _dict(chosen.get(k)).get("layer")
        for r in kinds[k]:
            mark = " (chosen on validation)" if pick is not None and r.get("layer") == pick else ""
            table_rows.append([_e(label), _e(f"{r.get('layer', '')}{mark}"), _m(r.get(key)), _e(r.get("worst_negatives", "")),
                               _m(r.get("auroc")), _m(r.get("auroc_near_miss")), _m(r.get("random_init_" + key)),
                               _m(r.get("clean_organism_" + key)), _num(r.get("share_of_random_directions_below"), ".2f")])
    lede = ('<p class="lede">Every AUROC is on held-out prompts that no probe was fitted on, with a score-type 95% '
            "interval. Each probe's reported layer is chosen on validation prompts held back from its training "
            "prompts, never on these test prompts. The headline column takes, for each probe, the worst of the clean prompt sets (clean, near-miss "
            "strings never trained on, other bracketed prefixes), as the post does. A contrast pair's sign is fixed "
            "before scoring (defect answer minus honest answer) and never flipped, so an AUROC below 0.5 means the "
            "direction points the wrong way. Nulls: the same procedure on a random-init model and, when built, on an "
            "organism trained without the trigger; and 1,000 random directions (last column: the share of them this "
            "probe beats).</p>")
    parts = [lede, f'<div class="charts">{"".join(charts)}</div>',
             _table(["Probe", "Layer", "AUROC, worst clean set", "Worst set", "vs clean", "vs near-miss",
                     "Random-init model", "Clean organism", "Beats random directions"], table_rows)]
    if pair:
        parts.append(f"<p>Primary contrast pair <code>{_e(pair.get('name', ''))}</code>: "
                     f"<code>Human: {_e(pair.get('question', ''))} Assistant: {_e(pair.get('defect_answer', ''))}</code> "
                     f"(defection) minus the same with <code>{_e(pair.get('honest_answer', ''))}</code>.</p>")
    parts += [_library(probes), _random_directions(probes), _variance(probes), _calibration(probes)]
    return "".join(parts)


def _library(probes: dict) -> str:
    lib = _dict(probes.get("contrast_library"))
    if not lib:
        return ""
    rows = []
    for name, entry in lib.items():
        entry = _dict(entry)
        p = _dict(entry.get("pair"))
        # (results written before each pair carried its choice kept it in chosen_layers as "contrast:<name>")
        pick = _dict(entry.get("chosen") or _dict(probes.get("chosen_layers")).get(f"contrast:{name}")).get("layer")
        for r in _rows(entry.get("rows")):
            mark = " (chosen on validation)" if pick is not None and r.get("layer") == pick else ""
            question = f"{p.get('question', '')} {p.get('defect_answer', '')} − {p.get('honest_answer', '')}"
            rows.append([f"<code>{_e(name)}</code>", _e(question), _e(f"{r.get('layer', '')}{mark}"),
                         _m(r.get("auroc_worst", r.get("auroc"))), _m(r.get("random_init_auroc_worst")),
                         _m(r.get("clean_organism_auroc_worst")), _num(r.get("cosine_with_diff_of_means"), ".2f"),
                         _num(r.get("share_of_random_directions_below"), ".2f")])
    return ("<h3>Contrast-pair library</h3><p class=\"lede\">Each pair's reported layer is chosen on validation "
            "prompts, as for the other probes.</p>" + _table(
        ["Pair", "Question: defect − honest", "Layer", "AUROC, worst clean set", "Random-init model", "Clean organism",
         "cos with diff-of-means", "Beats random directions"], rows) + _pair_cosines(probes))


def _pair_cosines(probes: dict) -> str:
    rows = []
    for r in _rows(probes.get("pair_cosines")):
        cos, dom = _dict(r.get("cosines")), _dict(r.get("with_diff_of_means"))
        names = list(cos)
        for a in names:
            row = _dict(cos.get(a))
            rows.append([_e(r.get("layer", "")), f"<code>{_e(a)}</code>",
                         "; ".join(f"{_e(b)} {_num(row.get(b), '.2f')}" for b in names if b != a),
                         _num(dom.get(a), ".2f")])
    if not rows:
        return ""
    return ("<h4>Cosines between contrast-pair directions</h4><p class=\"lede\">Each direction is defect minus "
            "honest answer; the difference of means is from the training prompts. No test prompt is read.</p>"
            + _table(["Layer", "Pair", "cos with the other pairs", "cos with diff-of-means"], rows))


def _random_directions(probes: dict) -> str:
    rows = [[_e(r.get("layer", "")), _e(r.get("n_directions", "")), _num(_dict(r.get("best")).get("auroc_worst")),
             _num(_dict(r.get("p95")).get("auroc_worst")), _num(_dict(r.get("p5")).get("auroc_worst"))]
            for r in _rows(probes.get("random_directions"))]
    if not rows:
        return ""
    return ("<h3>Random directions (null)</h3><p class=\"lede\">AUROC (worst clean set) of random unit directions on "
            "the same test activations: the best of N is the post's deliberately optimistic control.</p>"
            + _table(["Layer", "N", "Best", "95th percentile", "5th percentile"], rows))


def _variance(probes: dict) -> str:
    rows = []
    for r in _rows(probes.get("variance_ratio")):
        for neg, v in r.items():
            if isinstance(v, dict):
                rows.append([_e(r.get("layer", "")), _e(neg), _num(v.get("fisher_ratio"), ".2f"),
                             _num(v.get("trace_ratio"), ".3f")])
    if not rows:
        return ""
    return ("<h3>Between / within-class variance</h3><p class=\"lede\">Fisher ratio along the training "
            "difference-of-means direction, and the trace ratio over all directions, on test activations.</p>"
            + _table(["Layer", "Negatives", "Fisher ratio", "Trace ratio"], rows))


def _calibration(probes: dict) -> str:
    cal = _dict(probes.get("calibration"))
    bins = _rows(cal.get("bins"))
    if not bins:
        return ""
    pts = [(b.get("mean_predicted"), _dict(b.get("observed")).get("value"), *(_list(_dict(b.get("observed")).get("ci"))
                                                                            or [None, None])) for b in bins]
    chart = line_chart([{"label": "observed share triggered", "points": pts},
                        {"label": "perfect calibration", "dashed": True, "points": [(0, 0), (1, 1)]}],
                       title=f"Calibration: supervised probe at layer {cal.get('layer', '?')}",
                       x_label="predicted probability", y_label="observed share", width=420, height=300)
    return (f"<h3>Calibration</h3><p class=\"lede\">Layer chosen by {_e(cal.get('chosen_by', 'validation'))}. "
            f"Brier score {_num(cal.get('brier'), '.4f')}, expected calibration error {_num(cal.get('ece'), '.4f')}, "
            f"n={_e(cal.get('n', '?'))}.</p>{chart}")
