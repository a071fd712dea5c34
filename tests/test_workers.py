"""Forked one-thread workers (workers.py): a run's independent stages at once, with the same results,
the same resume and the same --fresh as in one process; errors and dead workers reach the parent."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from conftest import make_tiny_recipe

from mesascope.config import EvalSpec
from mesascope.errors import MesascopeError
from mesascope.store import RunStore, computing
from mesascope.workers import Task, run_tasks

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="workers fork, and this platform cannot")


def _pid_task(name: str, meet=None):
    """A task that reports its pid; with `meet` (a folder), it waits until two processes have arrived there,
    so two workers must have taken tasks however slowly the second one started."""
    def run(progress):
        progress(name, 1, 1)
        if meet is not None:
            (meet / str(os.getpid())).touch()
            deadline = time.monotonic() + 20
            while len(list(meet.iterdir())) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        return {"t_s": 1.0, f"{name}_pid": float(os.getpid())}
    return Task(name, run)


def test_tasks_run_in_other_processes_and_report_back(tmp_path):
    seen = []
    timed = run_tasks([_pid_task(f"t{i}", tmp_path) for i in range(4)], 2, lambda task, done, total: seen.append(task))
    assert timed["t_s"] == 4.0 and sorted(seen) == ["t0", "t1", "t2", "t3"]
    pids = {timed[f"t{i}_pid"] for i in range(4)}
    assert len(pids) == 2 and os.getpid() not in pids


def test_a_tasks_error_is_raised_in_the_parent_and_the_other_worker_stopped(tmp_path):
    def bad(progress):
        raise ValueError("no such prompt set: name one of clean, triggered")

    def slow(progress):
        time.sleep(30)
        (tmp_path / "finished").touch()
        return {}

    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="no such prompt set") as err:
        run_tasks([Task("slow", slow), Task("bad", bad)], 2)
    assert time.perf_counter() - t0 < 20 and not (tmp_path / "finished").exists()
    assert any("bad" in note for note in err.value.__notes__)


def test_a_killed_worker_is_a_one_line_error_naming_its_task():
    def killed(progress):
        os.kill(os.getpid(), signal.SIGKILL)

    died = r"died \(exit code -9\) while running stress lr=0\.003.*run the command again"
    with pytest.raises(MesascopeError, match=died):
        run_tasks([Task("stress lr=0.003", killed), _pid_task("other")], 2, poll_s=0.1)


def test_what_one_worker_computes_under_the_lock_the_other_reads(tmp_path):
    """`computing`: two workers wanting one stage-wide result compute it once (Stress curves' red team, the
    probes' and steering's capture)."""
    target, runs = tmp_path / "search.json", tmp_path / "runs.log"

    def want(progress):
        with computing(target):
            if not target.exists():
                with open(runs, "a") as f:
                    f.write("computed\n")
                time.sleep(0.5)
                target.write_text("{}")
        return {}

    run_tasks([Task("a", want), Task("b", want)], 2)
    assert runs.read_text() == "computed\n"


def _strip(results: dict) -> dict:
    return {k: v for k, v in results.items() if k not in ("timings", "organism", "provenance", "created")}


@pytest.mark.slow
def test_the_demo_in_workers_equals_the_demo_in_one_process_and_fresh_recomputes_once(tmp_path):
    """Both stress curves, the measurement and every demo detector in two one-thread workers: the same results,
    bit for bit, as one process gives; rerun, nothing is recomputed; with --fresh, each stage once (the parent
    reads what its workers wrote rather than clearing it again)."""
    from mesascope.pipeline import DemoSpec, run_demo

    demo = DemoSpec(recipe=make_tiny_recipe(name="workers"), eval=EvalSpec(n=24, batch_size=32, n_samples=2),
                    stress={"lrs": [3e-3, 1e-3], "steps": 10, "batch_size": 8, "eval_at": [0, 10], "n_eval": 16},
                    probe={"n_train": 24, "n_test": 24, "n_bootstrap": 100, "n_random_directions": 8},
                    patch={"n_pairs": 4, "n_bootstrap": 100}, steer={"coefs": [-1.0], "n_eval": 16})
    # One process on this test process's threads (one under xdist: two here would spin against the other test
    # process and the workers); bench/demo_stages.py compares the default organism against two threads.
    one = _strip(run_demo(demo, tmp_path / "one", workers=1).model_dump(mode="json"))
    assert "workers" not in json.loads((tmp_path / "one" / "results.json").read_text())["timings"]

    run = run_demo(demo, tmp_path / "two", workers=2)
    assert run.timings["workers"] == 2 and run.timings["in_workers_s"] > 0
    assert _strip(run.model_dump(mode="json")) == one

    curve = next((tmp_path / "two").glob("runs/stress-*/curve-lr0.001.json"))
    before = curve.stat().st_mtime_ns
    again = run_demo(demo, tmp_path / "two", workers=2)
    assert "in_workers_s" not in again.timings and curve.stat().st_mtime_ns == before  # all stored: no workers

    fresh = run_demo(demo, tmp_path / "two", fresh=True, workers=2)
    after = curve.stat().st_mtime_ns
    assert after != before and fresh.timings["workers"] == 2 and _strip(fresh.model_dump(mode="json")) == one
    # The stress stage was cleared once, by the parent, before its workers wrote into it: both curves are there.
    assert json.loads(curve.read_text()) and len(list(curve.parent.glob("curve-lr*.json"))) == 2


def test_fresh_clears_a_stage_once_across_the_workers_of_one_invocation(tmp_path):
    """Under --fresh a stage is cleared the first time this invocation opens it, by whichever process opens it
    first: a second worker opening it must not wipe what the first wrote there (the probes' capture that
    steering reads). The next --fresh invocation clears it again."""
    RunStore(tmp_path).stage_dir("activations", "k").joinpath("stale").write_text("an earlier run's")
    store = RunStore(tmp_path, fresh=True)

    def writer(name: str, wait: float):
        def run(progress):
            time.sleep(wait)
            store.stage_dir("activations", "k").joinpath(name).write_text(name)
            return {}
        return Task(name, run)

    run_tasks([writer("first", 0.0), writer("second", 0.5)], 2)
    d = store.stage_dir("activations", "k")  # the parent: what its workers wrote stays
    assert sorted(p.name for p in d.iterdir()) == ["first", "second"]
    assert not any(RunStore(tmp_path, fresh=True).stage_dir("activations", "k").iterdir())


def test_only_small_cpu_models_go_to_workers(tmp_path):
    import torch

    from mesascope.workers import SMALL_MODEL_BYTES, can_fork

    (tmp_path / "model.safetensors").write_bytes(b"\0" * 1024)
    assert can_fork(torch.device("cpu"), tmp_path) and not can_fork(torch.device("cuda"), tmp_path)
    with open(tmp_path / "model-00002.safetensors", "wb") as f:
        f.truncate(SMALL_MODEL_BYTES)  # sparse: the size is what counts
    assert not can_fork(torch.device("cpu"), tmp_path)


def _gone(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # a zombie no one has reaped yet is dead too


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc to see the worker go")
def test_workers_die_with_a_parent_killed_outright(tmp_path):
    """kill -9 of the command alone (the OOM killer's way) leaves no worker computing on into its store."""
    import multiprocessing

    pid_file = tmp_path / "worker.pid"

    def parent():
        def long(progress):
            pid_file.write_text(str(os.getpid()))
            time.sleep(60)
            return {}
        run_tasks([Task("long", long), Task("other", long)], 2)

    proc = multiprocessing.get_context("fork").Process(target=parent)
    proc.start()
    deadline = time.monotonic() + 30
    while not pid_file.exists():
        assert time.monotonic() < deadline, "no worker started"
        time.sleep(0.05)
    worker = int(pid_file.read_text())
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    deadline = time.monotonic() + 5
    while not _gone(worker):
        if time.monotonic() > deadline:
            os.kill(worker, signal.SIGKILL)
            pytest.fail("the worker outlived its killed parent by 5 s")
        time.sleep(0.1)


def test_workers_only_when_every_thread_gets_one(monkeypatch):
    import torch

    from mesascope.workers import default_workers

    for threads, tasks, want in ((1, 7, 1), (2, 7, 2), (2, 2, 2), (2, 1, 1), (4, 7, 4), (16, 7, 1)):
        monkeypatch.setattr(torch, "get_num_threads", lambda t=threads: t)
        assert default_workers(tasks) == want, (threads, tasks)
