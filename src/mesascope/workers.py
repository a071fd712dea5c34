"""A run's independent stages at once, in forked worker processes of one thread each.

Once an organism exists, its stress curves (one per learning rate), its measurement and its detectors
each read the organism alone. On a CPU a model this small gains far less from a second thread than
from a second process: the default demo's stress curve takes only about a third longer on one thread
than on two, so two one-thread workers draw both curves far sooner than one process draws them one
after the other (docs/demo.md). `run_tasks` runs such tasks on `workers` forked processes, longest
first as given, each writing its stages into the run store exactly as the parent would (the same
files and bits: tests/test_workers.py checks it against one process on a tiny organism, and
bench/demo_stages.py against one two-thread process on the default); the parent then reads them back
through its usual calls, so results, resuming after a kill and `--fresh` behave as in one process.

Fork, not spawn: a worker inherits the imported library, the corpus and the organism's spec instead of
spending ~5 s importing torch and transformers. Each worker sets one torch thread before any work, as
PyTorch's DataLoader workers do, so no OpenMP thread pool is entered after the fork (a forked child
that used two threads after its parent had hung in its first parallel region, tried on torch 2.13's
CPU wheel). A process that
has started CUDA cannot fork, so runs on a GPU keep their stages in one process, as do large models,
which use a second thread well and would need a copy of their weights per worker (`can_fork`).
"""

from __future__ import annotations

import os
import pickle
import queue
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import torch

from .errors import MesascopeError
from .progress import Progress, silent


@dataclass(frozen=True)
class Task:
    """One unit for a worker: `run(progress)` computes and stores its stages, and returns what it timed."""

    name: str
    run: Callable[[Progress], dict[str, float]]


# Weights up to this size (64M float32 parameters) go to workers. Beyond it a second thread pays for itself
# in larger matrix products, and each worker's own copy of the weights would cost memory instead.
SMALL_MODEL_BYTES = 256 << 20


def can_fork(device: torch.device, model_dir: Path) -> bool:
    """Stages may go to forked workers: a CPU run of a small model, on a platform with fork, in a process
    that has not started CUDA."""
    weights = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
    return (device.type == "cpu" and hasattr(os, "fork") and not torch.cuda.is_initialized()
            and weights <= SMALL_MODEL_BYTES)


def _portable(e: BaseException) -> BaseException:
    """`e` if it survives pickling (so the parent raises the worker's own error), else its one-line text."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}")


def _worker(tasks: Sequence[Task], todo, out, held, slot: int, parent: int) -> None:
    from .study.backends import _exit_with_parent

    _exit_with_parent(parent)  # a parent killed outright (kill -9) leaves no worker writing on into its store
    torch.set_num_threads(1)
    while (i := todo.get()) is not None:
        held[slot] = i  # written at once (the queue's writes are not: a killed worker's may be lost)
        try:
            timed = tasks[i].run(lambda task, done, total: out.put(("progress", task, done, total)))
        except BaseException as e:  # noqa: BLE001 - handed to the parent, which raises it
            out.put(("error", i, _portable(e), traceback.format_exc()))
            return
        out.put(("done", i, timed))


def run_tasks(tasks: Sequence[Task], workers: int, progress: Progress = silent,
              poll_s: float = 0.5) -> dict[str, float]:
    """Run `tasks` on `workers` forked one-thread processes, each taking the next task when it finishes one;
    returns the timings they report, summed by name. The first error a task raises is raised here, after
    the other workers are stopped (what they finished stays in the store); a worker that dies (killed,
    out of memory) raises a MesascopeError naming its task."""
    ctx = get_context("fork")
    todo, out = ctx.SimpleQueue(), ctx.Queue()
    for i in range(len(tasks)):
        todo.put(i)
    for _ in range(workers):
        todo.put(None)
    held = ctx.Array("i", [-1] * workers)  # worker slot -> the task it runs
    procs = [ctx.Process(target=_worker, args=(tasks, todo, out, held, w, os.getpid()), daemon=True)
             for w in range(workers)]
    for p in procs:
        p.start()
    timings: dict[str, float] = {}
    pending, all_gone = set(range(len(tasks))), False
    try:
        while pending:
            try:
                kind, i, *rest = out.get(timeout=poll_s)
            except queue.Empty:
                # A worker's messages are in the pipe before it exits, so one more quiet poll after the last
                # exit means none is coming.
                if all_gone:
                    raise MesascopeError(f"the workers stopped with {', '.join(tasks[i].name for i in sorted(pending))}"
                                         " unfinished", "run the command again: every stage finished so far is kept")
                all_gone = _all_gone(procs, held, tasks)
                continue
            if kind == "progress":
                progress(i, *rest)
            elif kind == "done":
                pending.discard(i)
                for name, s in rest[0].items():
                    timings[name] = round(timings.get(name, 0.0) + s, 2)
            else:
                error, trace = rest
                error.add_note(f"(in the worker that ran {tasks[i].name}:\n{trace})")
                raise error
    finally:
        for p in procs:
            if p.is_alive() and pending:
                p.terminate()
            p.join()
    return timings


def _all_gone(procs, held, tasks: Sequence[Task]) -> bool:
    """Whether every worker has exited; a MesascopeError naming its task if one died (a killed worker's last
    messages may be lost, so it is not waited for)."""
    for w, p in enumerate(procs):
        if p.exitcode not in (None, 0):
            task = tasks[held[w]].name if held[w] >= 0 else "no task yet"
            raise MesascopeError(f"a worker process died (exit code {p.exitcode}) while running {task}",
                                 "run the command again: every stage finished so far is kept and reused")
    return all(p.exitcode is not None for p in procs)


def default_workers(n_tasks: int) -> int:
    """One worker per torch thread this process has (the cores by default, or OMP_NUM_THREADS) when there are
    at least as many tasks; otherwise 1, the stages in this process. A worker keeps to one thread (below), so
    with more threads than tasks, workers would leave cores idle that one process's threads would use."""
    threads = torch.get_num_threads()
    return threads if 2 <= threads <= n_tasks else 1
