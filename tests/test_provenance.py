"""provenance.write_results: the block every docs/results file carries, written atomically."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mesascope import provenance as prov

SOURCE = Path(prov.__file__)


def test_block_names_command_commit_machine_and_time(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["/x/bin/mesascope", "replicate", "--seeds", "0,1,2", "--out", "a b"])
    block = prov.provenance()
    assert block["command"] == "mesascope replicate --seeds 0,1,2 --out 'a b'"  # pasteable into a shell
    assert prov.provenance("mesascope demo --out d")["command"] == "mesascope demo --out d"
    m = block["machine"]
    assert m["python"].count(".") == 2 and m["cpus"] >= 1 and m["platform"]
    assert m["torch"].split("+")[0].count(".") == 2 and m["device"].split(" ")[0] in ("cpu", "cuda")
    assert block["created"].endswith("Z") and block["created"][:2] == "20"
    assert capsys.readouterr() == ("", "")  # the library never prints


def test_commit_is_the_source_trees_head():
    repo = SOURCE.parents[2]
    if shutil.which("git") is None or not (repo / ".git").exists():
        pytest.skip("not a git checkout: the commit falls back to the package version")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True).stdout
    block = prov.provenance("mesascope x")
    assert block["commit"] == head.strip() and isinstance(block["dirty"], bool)


def test_commit_falls_back_to_the_version_without_git(monkeypatch):
    monkeypatch.setattr(prov, "_git", lambda *args: None)
    monkeypatch.delenv("MESASCOPE_COMMIT", raising=False)
    assert prov.provenance("mesascope x")["commit"].startswith("mesascope ")
    monkeypatch.setenv("MESASCOPE_COMMIT", "5f7ca6c")  # a copy of the tree without .git says where it came from
    block = prov.provenance("mesascope x")
    assert block["commit"] == "5f7ca6c" and block["commit_from"] == "MESASCOPE_COMMIT" and "dirty" not in block


def test_write_results_adds_provenance_first_and_replaces_atomically(tmp_path, monkeypatch):
    path = tmp_path / "deep" / "r.json"
    prov.write_results(path, {"provenance": None, "mean": {"helpful_accuracy": 0.5}}, command="mesascope a")
    data = json.loads(path.read_text())
    assert list(data) == ["provenance", "mean"] and data["provenance"]["command"] == "mesascope a"
    assert {"command", "commit", "machine", "created"} <= set(data["provenance"])
    assert path.stat().st_mode & 0o044  # readable by others, unlike a bare mkstemp file
    before = path.read_text()
    with pytest.raises(TypeError):
        prov.write_results(path, {"x": object()}, command="mesascope b")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(prov.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prov.write_results(path, {"x": 1}, command="mesascope c")
    assert path.read_text() == before and sorted(p.name for p in path.parent.iterdir()) == ["r.json"]


def test_imports_nothing_else_from_mesascope_and_never_prints():
    tree = ast.parse(SOURCE.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and not (node.module or "").startswith("mesascope"), ast.unparse(node)
        if isinstance(node, ast.Import):
            assert not any(a.name.startswith("mesascope") for a in node.names), ast.unparse(node)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id != "print"
