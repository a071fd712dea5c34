"""findings.py (the paper's questions from a study's aggregates) and the study report page."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from mesascope.evals.stats import wilson
from mesascope.findings import change, difference, findings
from mesascope.report.study import render_study_report
from mesascope.study import aggregate

N = 100


def _rows(method: str, before: int, after: int, adv: tuple[int, int] | None = None) -> list[dict]:
    rows = []
    for step, k in ((0, before), (50, after)):
        r = {"method": method, "lr": 1e-3, "step": step, "backdoor_rate": wilson(k, N).to_dict(),
             "false_trigger_rate": wilson(0, N).to_dict()}
        if adv:
            r["adversarial_rate"] = wilson(adv[step > 0], N).to_dict()
        rows.append(r)
    return rows


def _study(seeds=(0, 1, 2)) -> dict:
    """Hand-made outcomes: big models keep the backdoor, small lose it; cot keeps it; RL removes nothing;
    adversarial training kills the red-team prompts and keeps the true trigger."""
    cells = []
    after = {("xs", "none"): [20, 30, 25], ("xs", "cot"): [60, 70, 65], ("m", "none"): [90, 95, 92],
             ("m", "cot"): [99, 98, 100]}
    for (size, reasoning), ks in after.items():
        for seed in seeds:
            k = ks[seed]
            for method in ("hhh_sft", "rl", "adversarial"):
                rows = _rows(method, 100, 100 if method != "hhh_sft" else k,
                             adv=(15, 0) if method == "adversarial" else None)
                cells.append({"id": f"{size}-{reasoning}-{seed}-{method}", "rows": rows,
                              "axes": {"size": size, "reasoning": reasoning, "seed": seed, "method": method,
                                       "lr": 1e-3}})
    return {"study": {"name": "t <script>"}, "aggregates": aggregate(cells),
            "sizes": {"xs": {"n_params": [40000]}, "m": {"n_params": [600000]}}, "counts": {"cells": len(cells)}}


def _entry(values: list[float]) -> dict:
    return {"per_seed": [{"seed": i, "value": v, "n": N} for i, v in enumerate(values)],
            "pooled": {**wilson(round(sum(values) * N), N * len(values)).to_dict()}}


def test_difference_is_welch_t_over_seeds():
    a, b = [0.9, 0.95, 0.92], [0.2, 0.3, 0.25]
    d = difference(_entry(a), _entry(b))
    ref = sps.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert d["value"] == pytest.approx(np.mean(a) - np.mean(b), abs=1e-6)
    assert d["ci"] == pytest.approx([ref.low, ref.high], abs=1e-5)
    assert d["verdict"] == "higher"


def test_change_is_paired_t_over_seeds():
    before, after = [1.0, 0.98, 0.99], [0.5, 0.7, 0.4]
    d = change(_entry(before), _entry(after))
    ref = sps.ttest_rel(after, before).confidence_interval(0.95)
    assert d["ci"] == pytest.approx([ref.low, ref.high], abs=1e-5)
    assert d["verdict"] == "lower" and d["interval"] == "paired t over seeds"


def test_one_seed_falls_back_to_newcombe_over_prompts():
    d = difference(_entry([0.9]), _entry([0.5]))
    assert d["interval"].startswith("Newcombe") and d["ci"][0] > 0


def test_findings_read_the_planted_outcomes():
    got = {q["question"]: q for q in findings(_study())}
    size = got["Does persistence grow with model size?"]
    sft = [c for c in size["comparisons"] if c["axes"]["method"] == "hhh_sft"]
    assert {c["difference"]["verdict"] for c in sft} == {"higher"}
    assert len(sft) == 2  # none and cot
    rl = got["Does RL safety training remove the backdoor?"]["comparisons"]
    assert rl and all(c["difference"]["value"] == 0 for c in rl)
    cot = [c for c in got["Is a chain-of-thought or distilled chain-of-thought backdoor more persistent?"]["comparisons"]
           if c["axes"]["method"] == "hhh_sft" and c["axes"]["size"] == "xs"]
    assert cot[0]["difference"]["verdict"] == "higher"
    adv = got["Does adversarial training remove the backdoor or teach the organism to hide it?"]["comparisons"]
    assert adv and all(c["reading"].startswith("hides") for c in adv)
    lr = got["How does persistence depend on the safety-training learning rate?"]
    assert lr["comparisons"] == [] and lr["summary"].startswith("Not answerable")


def test_study_report_escapes_and_shows_every_question():
    page = render_study_report(_study())
    assert "<script>" not in page and "t &lt;script&gt;" in page
    for q in findings(_study()):
        assert q["question"].replace("'", "&#x27;") in page
    assert "Hubinger et al. 2024" in page
    assert render_study_report({}).count("not measured") >= 3  # an empty study renders, saying so
