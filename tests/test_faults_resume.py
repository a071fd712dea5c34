"""kill -9 at seeded random points of stress training, a sweep and an activation capture to disk; the
same command run again must finish with what an uninterrupted run gives, bit for bit, and must not redo
work that had finished before the kill (the build's kill test is in test_faults.py).

Each run is its own process, killed with SIGKILL (its whole process group, so a sweep's pool workers die
with it) right after the k-th of its output files appears, k and a short extra delay drawn from a seeded
RNG, so each seed stops it in another place: mid-training, between saving a stressed organism and its
curve, mid-shard, while measuring.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file


pytestmark = pytest.mark.slow
MESASCOPE = [sys.executable, "-c", "from mesascope.cli import app; app()"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_to_end(cmd: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env or ENV)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stdout + done.stderr
    return done


def kill_after(cmd: list[str], events: Callable[[], int], k: int, delay: float, timeout: float = 120,
               env: dict | None = None, leader_only: bool = False) -> None:
    """Run `cmd`, and SIGKILL its process group `delay` s after `events()` first reaches `k`.
    Fails if the process ends first: a kill that never happened tests nothing. `leader_only` kills the
    command's own process alone (as the OOM killer would), and fails unless the workers it forked go too."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env or ENV,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while events() < k:
            assert proc.poll() is None, f"the run ended before event {k}: {proc.stderr.read()}"
            assert time.monotonic() < deadline, f"no event {k} within {timeout} s"
            time.sleep(0.005)
        time.sleep(delay)
        assert proc.poll() is None, f"the run finished before the kill (event {k} + {delay:.2f} s)"
        if leader_only:
            proc.kill()
            proc.wait()
            deadline = time.monotonic() + 10
            while _group_alive(proc.pid):
                assert time.monotonic() < deadline, "workers outlived the killed command by 10 s"
                time.sleep(0.1)
    finally:
        if proc.poll() is None or _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def snapshot(paths) -> dict[Path, int]:
    """Each file's modification time: a file a rerun rewrote has a new one."""
    return {p: p.stat().st_mtime_ns for p in paths}


def same_tensors(a: Path, b: Path) -> bool:
    x, y = load_file(a), load_file(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.fixture(scope="module")
def organism_dir(tiny_organism) -> Path:
    return tiny_organism.path  # the session's tiny organism: read, never written, by the commands below


# --- (a) stress: three persistence curves, each saved as its stressed organism, then its curve file

STRESS = """[eval]\nn = 16\nbatch_size = 32\nn_samples = 0
[stress]\nmethod = "{method}"\nlrs = [3e-3, 1e-3, 3e-4]\nsteps = 20\nbatch_size = 8\neval_at = [0, 10, 20]\nn_eval = 16
"""
LRS = ("0.003", "0.001", "0.0003")


def stress_cmd(organism: Path, tmp: Path, method: str, out: Path) -> list[str]:
    cfg = tmp / f"{method}.toml"
    cfg.write_text(STRESS.format(method=method))
    return [*MESASCOPE, "stress", str(organism), "--config", str(cfg), "--out", str(out)]


def stress_events(out: Path) -> int:
    """1 once the stress stage exists, then +1 per file it keeps: the stage-wide results adversarial training
    computes once (its red-team search, the specificity curve before), each stressed organism and curve."""
    stage = next(out.glob("runs/stress-*"), None)
    if stage is None:
        return 0
    return 1 + sum(1 for p in stage.iterdir() if p.name.startswith(("red_team-", "specificity-", "stressed-lr",
                                                                     "curve-lr")))


@pytest.fixture(scope="module")
def stressed(organism_dir, tmp_path_factory) -> dict[str, Path]:
    """method -> the OUT of an uninterrupted `mesascope stress` of the organism."""
    tmp = tmp_path_factory.mktemp("stress-ref")
    refs = {}
    for method in ("hhh_sft", "adversarial"):
        run_to_end(stress_cmd(organism_dir, tmp, method, tmp / method))
        refs[method] = tmp / method
    return refs


# adversarial's seed 5 kills in its second curve, which must train against the red team stored by the first.
# With 2 threads the command draws its curves in two forked one-thread workers (workers.py), against a reference
# drawn in one process: killed with its workers (seed 7), or alone, its workers left to notice (seed 3).
@pytest.mark.parametrize("method,seed,threads", [("hhh_sft", 0, 1), ("hhh_sft", 1, 1), ("adversarial", 5, 1),
                                                 ("hhh_sft", 7, 2), ("adversarial", 3, 2)])
def test_stress_killed_at_a_random_point_resumes_bit_identically(organism_dir, stressed, tmp_path, method, seed,
                                                                   threads):
    rng = random.Random(seed)
    out, ref = tmp_path / "out", stressed[method]
    cmd = stress_cmd(organism_dir, tmp_path, method, out)
    env = {**ENV, "OMP_NUM_THREADS": str(threads)}
    kill_after(cmd, lambda: stress_events(out), rng.randint(1, 6), rng.uniform(0.0, 0.3), env=env,
               leader_only=seed == 3)
    stage = next(out.glob("runs/stress-*"))
    ref_stage = ref / "runs" / stage.name
    assert ref_stage.is_dir(), "the killed run's stress stage is another one than the uninterrupted run's"
    kept = snapshot(stage.glob("curve-lr*.json"))  # finished curves: never trained again
    kept |= snapshot(p for c in kept for p in stage.glob(f"stressed-lr{c.stem.removeprefix('curve-lr')}/*"))
    missing = len(LRS) - len(list(stage.glob("curve-lr*.json")))
    done = run_to_end(cmd, env)
    assert snapshot(kept) == kept, "a curve finished before the kill was computed again"
    for lr in LRS:
        curve = f"curve-lr{lr}.json"
        assert (stage / curve).read_bytes() == (ref_stage / curve).read_bytes(), f"{curve} differs"
        got, want = stage / f"stressed-lr{lr}", ref_stage / f"stressed-lr{lr}"
        assert same_tensors(got / "model.safetensors", want / "model.safetensors"), f"weights at lr={lr} differ"
        for name in ("stress.json", "organism.json"):  # the training log, what was done to it
            assert (got / name).read_bytes() == (want / name).read_bytes(), f"{name} at lr={lr} differs"
    results, want = (json.loads((d / "results.json").read_text()) for d in (out, ref))
    assert results["stress"] == want["stress"] and results["metrics"] == want["metrics"]
    if threads == 1 or missing >= 2:  # (one curve left, and the measurement done before the kill: one task)
        assert ("workers" in results["timings"]) == (threads > 1), (missing, results["timings"], done.stdout)


# --- (b) a sweep: 2 organisms, then 4 cells (a stress stage and a cell marker each), one worker process

def sweep_cmd(tmp: Path, out: Path) -> list[str]:
    from test_sweep import TINY_STUDY  # 2 seeds x 2 lrs of hhh_sft on a 30-step tiny organism

    (study := tmp / "tiny-study.toml").write_text(TINY_STUDY)
    return [*MESASCOPE, "sweep", str(study), "--out", str(out), "--workers", "1", "--threads", "1"]


def finished(out: Path, kind: str = "*") -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in out.glob(f"runs/{kind}-*/done.json")}


def figures(study: dict) -> dict:
    """What a sweep measured: every cell's rows, the aggregates, each organism's size and final loss."""
    return {"cells": [(c["id"], c["axes"], c["rows"]) for c in study["cells"]], "aggregates": study["aggregates"],
            "organisms": [(o["recipe_digest"], o["n_params"], o["final_loss"]) for o in study["organisms"]]}


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("sweep-ref")
    run_to_end(sweep_cmd(tmp, tmp / "out"))
    return json.loads((tmp / "out" / "study.json").read_text())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sweep_killed_at_a_random_point_resumes_to_the_same_study(swept, tmp_path, seed):
    rng = random.Random(seed)
    out = tmp_path / "out"
    cmd = sweep_cmd(tmp_path, out)
    kill_after(cmd, lambda: len(finished(out)), rng.randint(1, 9), rng.uniform(0.0, 0.5))
    before = snapshot(finished(out))
    assert not (out / "study.json").exists()
    run_to_end(cmd)
    study = json.loads((out / "study.json").read_text())
    assert figures(study) == figures(swept)
    assert snapshot(before) == before  # nothing finished was redone
    built, cells = (len([p for p in before if p.parent.name.startswith(k)]) for k in ("organism-", "cell-"))
    assert study["counts"]["organisms_computed"] == 2 - built and study["counts"]["cells_computed"] == 4 - cells


# --- (c) activation capture to a shard folder: 12 shards of 16 prompts, 2 batches each, slowed to ~1 s

CAPTURE = """import sys, time
from mesascope.models import load_model
from mesascope.models.activations import capture
from mesascope.text.corpus import format_prompt
model, tok = load_model(sys.argv[1])
prompts = [format_prompt("What is " + " plus ".join([str(a)] * (1 + a % 5)) + "?") for a in range(192)]
capture(model, tok, prompts, "blocks.*.resid_post", sys.argv[3], batch_size=8, out_dir=sys.argv[2], shard_size=16,
        on_batch=lambda k: time.sleep(0.02))  # long enough that a kill can land among the shards
"""


def capture_cmd(organism: Path, out: Path, positions: str) -> list[str]:
    return [sys.executable, "-c", CAPTURE, str(organism), str(out), positions]


@pytest.fixture(scope="module")
def captured(organism_dir, tmp_path_factory) -> dict[str, Path]:
    """positions -> the folder of an uninterrupted capture."""
    tmp = tmp_path_factory.mktemp("capture-ref")
    for positions in ("all", "last"):
        run_to_end(capture_cmd(organism_dir, tmp / positions, positions))
    return {p: tmp / p for p in ("all", "last")}


@pytest.mark.parametrize("positions,seed", [("all", 0), ("last", 1), ("all", 2)])
def test_capture_killed_mid_way_and_rerun_equals_an_uninterrupted_capture(organism_dir, captured, tmp_path,
                                                                         positions, seed):
    from mesascope.models.activation_store import ActivationStore

    rng = random.Random(seed)
    out, ref = tmp_path / "acts", captured[positions]
    cmd = capture_cmd(organism_dir, out, positions)
    kill_after(cmd, lambda: len(list(out.glob("shard-*.safetensors"))), rng.randint(1, 10), rng.uniform(0.0, 0.04))
    assert not (out / "index.json").exists()
    with pytest.raises(FileNotFoundError, match="holds no finished capture"):
        ActivationStore(out)  # an unfinished capture is never read as a short one
    run_to_end(cmd)
    got, want = ActivationStore(out), ActivationStore(ref)
    assert got.index == want.index
    a, b = got.load(), want.load()
    assert a.hooks == b.hooks and all(np.array_equal(a[h], b[h]) for h in b.hooks)
    for field in ("offsets", "token_index"):
        assert (getattr(a, field) is None) == (getattr(b, field) is None) == (positions == "last")
        assert positions == "last" or np.array_equal(getattr(a, field), getattr(b, field))
    assert sorted(p.name for p in out.glob("shard-*")) == sorted(p.name for p in ref.glob("shard-*"))
    assert all((out / s["file"]).read_bytes() == (ref / s["file"]).read_bytes() for s in want.index["shards"])
