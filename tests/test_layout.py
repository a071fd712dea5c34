"""The layout shows the architecture: no import circles in src/, small modules, a thin CLI."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
MAX_LINES = 400


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"): p
            for p in sorted(SRC.rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of src/ it imports (top level or inside functions, relative or absolute)."""
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        pkg = m if path.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            for t in targets:
                if t in mods and t != m:
                    graph[m].add(t)
                    break
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of size > 1 (Tarjan). Edges into a package __init__ count too."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_planted_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_in_src():
    found = cycles(import_graph())
    assert not found, "import circles (break them so data flows one way): " + "; ".join(" <-> ".join(c) for c in found)


@pytest.mark.slow
def test_the_cli_and_every_detector_import_in_a_fresh_interpreter():
    res = subprocess.run([sys.executable, "-c", "import mesascope.cli; from mesascope.detectors.registry import "
                          "load_all; assert len(load_all()) >= 4"], capture_output=True, text=True,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "", "PYTHONPATH": str(SRC)})
    assert res.returncode == 0, res.stderr[-2000:]


def test_modules_are_small_and_the_cli_is_thin():
    big = {m: n for m, p in modules().items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines (split them by concept): {big}"
    assert len((SRC / "mesascope" / "cli.py").read_text(encoding="utf-8").splitlines()) < 250
