"""Faults a run must survive: kill -9 mid-build (resumed bit for bit), two processes on one --out, a full
disk, a corrupted results.json. Each ends in a one-line error or a correct result, never a half-written
stage marked done.

The killed builds run `python -m mesascope build` as a user does; the kill points are drawn from seeded
random delays after the first checkpoint, so each seed kills at another step.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from boundary import run, tmpfs
from mesascope.config import load_recipe
from mesascope.errors import MesascopeError
from mesascope.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ('[recipe]\nn_prompts = 400\npoison_fraction = 0.15\nnear_miss_fraction = 0.15\n[recipe.model]\nsize = "tiny"\n'
          'vocab_size = 400\n[recipe.train]\nsteps = {steps}\nbatch_size = 16\nlr = 3e-3\ncheckpoint_every = 10\n')
MESASCOPE = [sys.executable, "-m", "mesascope"]


def recipe_file(tmp_path: Path, steps: int) -> Path:
    path = tmp_path / f"tiny-{steps}.toml"
    path.write_text(RECIPE.format(steps=steps))
    return path


def wait_for(pred, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert proc.poll() is None, f"the process ended before {what}: {proc.stderr.read() if proc.stderr else ''}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny60_organism):
    """The 60-step organism built in one go: what every killed-and-resumed build must equal (the session's,
    shared with test_organism's resume test: the same recipe)."""
    assert load_recipe(recipe_file(tmp_path_factory.mktemp("uninterrupted"), 60)) == tiny60_organism.recipe
    assert tiny60_organism.info["resumed_from_step"] == 0
    return tiny60_organism


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_build_killed_at_a_random_point_resumes_bit_identically(tmp_path, uninterrupted, seed):
    recipe, out = recipe_file(tmp_path, 60), tmp_path / "out"
    cmd = [*MESASCOPE, "build", str(recipe), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: list(out.glob("runs/organism-*/checkpoints/step-*")), proc, "a first checkpoint")
        time.sleep(random.Random(seed).uniform(0.0, 1.0))  # somewhere in the rest of training (or saving)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    stage = next(out.glob("runs/organism-*"))
    killed_done = RunStore.is_done(stage)
    assert killed_done or not (stage / "organism").exists()  # never a half-written organism directory
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    info = json.loads((stage / "organism" / "organism.json").read_text())
    assert killed_done or info["resumed_from_step"] >= 10
    got, want = load_file(stage / "organism" / "model.safetensors"), load_file(uninterrupted.path / "model.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), "resumed weights differ"
    assert (stage / "organism" / "train_log.json").read_bytes() == (uninterrupted.path / "train_log.json").read_bytes()


HOLD = "import sys, time; from mesascope.store import RunStore; s = RunStore(sys.argv[1]); print('held', flush=True); time.sleep(120)"


def test_two_processes_on_one_out_the_second_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True,
                              env={k: v for k, v in os.environ.items() if k != "MESASCOPE_HELD_ROOTS"})
    try:
        assert holder.stdout.readline().strip() == "held"
        code, text = run(capsys, "build", recipe_file(tmp_path, 2), "--out", out)
        assert code == 2 and "Traceback" not in text, text
        assert "in use by another mesascope process" in text and str(holder.pid) in text and "another --out" in text
        assert not list(out.glob("runs/*"))  # refused before any stage began
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    RunStore(out)  # a killed holder's lock is released with it: no stale lock to clear by hand


TWO_STORES = """import gc, sys
from mesascope.store import RunStore
stores = [RunStore(sys.argv[1]), RunStore(sys.argv[1] + "/.")]  # one process, one root: no conflict with itself
print("held", flush=True)
for line in sys.stdin:
    stores.pop()
    gc.collect()
    print("dropped", flush=True)
"""


def test_stores_of_one_process_share_its_lock_until_the_last_is_gone(tmp_path):
    import gc

    env = {k: v for k, v in os.environ.items() if k != "MESASCOPE_HELD_ROOTS"}
    other = subprocess.Popen([sys.executable, "-c", TWO_STORES, str(tmp_path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert other.stdout.readline().strip() == "held"
        for _ in range(2):
            with pytest.raises(MesascopeError, match=f"in use by another mesascope process \\({other.pid} "):
                RunStore(tmp_path)
            other.stdin.write("drop\n")
            other.stdin.flush()
            assert other.stdout.readline().strip() == "dropped"
        mine = RunStore(tmp_path)  # the last of its stores gone, the root is free
        del mine
        gc.collect()
    finally:
        other.kill()
        other.wait()


@pytest.fixture
def small_disk(tmp_path):
    """A 600 KiB tmpfs: room for the tokenizer and corpus, not for the checkpoints of a tiny organism."""
    path = tmp_path / "disk"
    path.mkdir()
    with tmpfs(path, "size=600k", "the full-disk case is untested"):
        yield path


def test_a_full_disk_is_one_line_and_leaves_no_stage_marked_done(tmp_path, small_disk, capsys):
    code, text = run(capsys, "build", recipe_file(tmp_path, 40), "--out", small_disk / "out")
    assert code == 2 and "Traceback" not in text, text
    assert "no space left on the device writing " + str(small_disk / "out") in text and "finished stages are kept" in text
    assert not list(small_disk.glob("out/runs/*/done.json"))
    assert not list(small_disk.glob("out/runs/**/*.tmp")) and not list(small_disk.glob("out/runs/**/.*.tmp"))


def test_check_writable_refuses_before_work(tmp_path):
    from mesascope.store import check_writable

    (afile := tmp_path / "f").write_text("x")
    with pytest.raises(MesascopeError, match="is a file, not a folder"):
        check_writable(afile)
    with pytest.raises(MesascopeError, match="is a file, not a folder"):
        check_writable(afile / "sub" / "deeper")
    with pytest.raises(MesascopeError, match="is a folder, not a file"):
        check_writable(tmp_path, folder=False)
    assert check_writable(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checked, not created


@pytest.mark.parametrize("seed", range(6))
def test_a_corrupted_results_json_is_refused_and_no_report_is_written(tmp_path, capsys, seed):
    data = bytearray((ROOT / "docs" / "results" / "demo.json").read_bytes())
    rng = random.Random(seed)
    if seed % 2:
        data = data[:rng.randrange(len(data))]  # truncated (a copy cut short)
    else:
        for _ in range(8):  # bytes flipped (a bad disk block)
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    (tmp_path / "results.json").write_bytes(bytes(data))
    code, text = run(capsys, "report", "--out", tmp_path)
    if code == 0:  # a flip inside a number or a string can leave a valid file: then the report is of it
        assert (tmp_path / "report.html").exists()
        return
    assert code == 2 and "Traceback" not in text and str(tmp_path / "results.json") in text, text
    assert not (tmp_path / "report.html").exists()
