"""The probes section marks each contrast pair's layer chosen on validation prompts, and shows the cosines
between the pairs' directions, escaping every name."""

from __future__ import annotations

import re

from mesascope.report.detection import probes_section

EVIL = "<script>alert(1)</script>"


def _m(v: float) -> dict:
    return {"value": v, "ci": [v - 0.05, min(1.0, v + 0.05)], "n": 40}


def _rows(values: list[float]) -> list[dict]:
    return [{"layer": i, "hook": f"blocks.{i}.resid_post", "auroc": _m(v), "auroc_worst": _m(v),
             "worst_negatives": "clean"} for i, v in enumerate(values)]


def _probes() -> dict:
    pair = lambda name: {"name": name, "question": "Q?", "defect_answer": "yes", "honest_answer": "no"}  # noqa: E731
    return {
        "supervised": _rows([0.6, 0.9, 0.8]),
        "chosen_layers": {"supervised": {"layer": 2}},
        "contrast_library": {
            "danger": {"pair": pair("danger"), "rows": _rows([0.7, 0.95, 0.61]), "chosen": {"layer": 2}},
            EVIL: {"pair": pair(EVIL), "rows": _rows([0.55, 0.5, 0.52])},  # written before pairs carried a choice
        },
        "pair_cosines": [{"layer": 1, "hook": "blocks.1.resid_post",
                          "cosines": {"danger": {"danger": 1.0, EVIL: 0.4242}, EVIL: {"danger": 0.4242, EVIL: 1.0}},
                          "with_diff_of_means": {"danger": -0.3131, EVIL: 0.1717}}],
    }


def _cells(page: str, marker: str) -> list[list[str]]:
    table = page[page.index(marker):]
    table = table[:table.index("</table>")]
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", table)]


def test_each_pair_is_marked_at_its_validation_layer_not_its_best_test_layer():
    probes = _probes()
    probes["chosen_layers"][f"contrast:{EVIL}"] = {"layer": 0}  # an older file's place for the pair's choice
    page = probes_section(probes)
    lib = [r for r in _cells(page, "Contrast-pair library") if r]
    marked = [(r[0], r[2]) for r in lib if "chosen on validation" in r[2]]
    assert marked == [("<code>danger</code>", "2 (chosen on validation)"),
                      ("<code>&lt;script&gt;alert(1)&lt;/script&gt;</code>", "0 (chosen on validation)")]
    sup = [r for r in _cells(page, "<table>") if r and "chosen on validation" in r[1]]
    assert [r[1] for r in sup] == ["2 (chosen on validation)"]  # layer 1 is best on test; 2 was chosen


def test_pair_cosines_render_escaped():
    page = probes_section(_probes())
    assert "<script" not in page
    rows = [r for r in _cells(page, "Cosines between contrast-pair directions") if r]
    assert rows[0][1:] == ["<code>danger</code>", "&lt;script&gt;alert(1)&lt;/script&gt; 0.42", "-0.31"]
    assert rows[1][2:] == ["danger 0.42", "0.17"]
    del_cos = _probes()
    del del_cos["pair_cosines"]
    assert "Cosines between contrast-pair directions" not in probes_section(del_cos)
