"""Sweep scaling: wall time of the same small Study with 1 and 2 local workers, and Ray with 2.

Every run gets a fresh run store, so each builds every organism and runs every cell itself.
The wall time includes what a user waits for: starting the workers (spawned Python processes
that import torch) or the local Ray instance, and the phase barriers (distilled builds wait for
their teachers, cells for their organisms). Each worker gets cores / workers torch threads, so
the default 1-worker run uses every core too, and its ratio measures process parallelism against
torch's intra-op threads, which for models this small scale poorly (and stall on a busy machine).
A 1-worker run with one torch thread is timed as well: against it the ratio is pure process
parallelism.

    python bench/sweep_scaling.py [--seeds 4] [--steps 200] [--cells-lrs 2] [--no-ray] [--skip-threaded]
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from mesascope.study.results import StudyResults
from mesascope.study.spec import StudySpec
from mesascope.study.sweep import run_study


def small_study(seeds: int, steps: int, lrs: int) -> StudySpec:
    """Tiny organisms (~46k parameters), one HHH SFT curve per seed and learning rate."""
    return StudySpec(
        name="scaling-bench",
        recipe={"n_prompts": 1000, "model": {"size": "tiny", "vocab_size": 400},
                "train": {"steps": steps, "batch_size": 32, "checkpoint_every": steps}},
        seeds=list(range(seeds)),
        methods=[{"method": "hhh_sft", "lrs": [1e-3 * 3 ** -i for i in range(lrs)], "steps": 60, "batch_size": 16,
                  "eval_at": [0, 60], "n_eval": 40}],
        eval={"max_new_tokens": 32, "batch_size": 64},
    )


def timed(study: StudySpec, backend: str, workers: int, threads: int | None) -> tuple[float, StudyResults]:
    out = tempfile.mkdtemp(prefix=f"sweep-{backend}{workers}-")
    try:
        t0 = time.perf_counter()
        result = run_study(study, out, backend=backend, workers=workers, threads=threads)
        return time.perf_counter() - t0, result
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=4, help="organisms built (one per seed)")
    ap.add_argument("--steps", type=int, default=200, help="training steps per organism")
    ap.add_argument("--cells-lrs", type=int, default=2, help="learning rates per organism (cells = seeds x this)")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray run")
    ap.add_argument("--skip-threaded", action="store_true",
                    help="skip the 1-worker run with cores torch threads (minutes on a busy machine)")
    ap.add_argument("--results", default=None, help="also write the runs here, with provenance")
    args = ap.parse_args()

    study = small_study(args.seeds, args.steps, args.cells_lrs)
    print(f"study: {args.seeds} tiny organisms x {args.steps} steps, {args.seeds * args.cells_lrs} HHH SFT cells; "
          f"{os.cpu_count()} CPU cores; load average {os.getloadavg()[0]:.2f}")
    # (backend, workers, torch threads per worker; None: the default, cores // workers)
    runs = ([] if args.skip_threaded else [("local", 1, None)]) + [("local", 1, 1), ("local", 2, None)] + \
        ([] if args.no_ray else [("ray", 2, None)])
    times, rows, table = {}, {}, {}  # each keyed by (backend, workers, threads per worker)
    for backend, workers, threads in runs:
        t, result = timed(study, backend, workers, threads)
        key = (backend, workers, result.backend.torch_threads_per_worker)
        times[key], rows[key] = t, [c.rows for c in result.cells]
        ph = result.timings
        table[key] = {
            "backend": backend, "workers": workers, "threads_per_worker": key[2], "wall_s": round(t, 2),
            "builds_s": round(ph["phase1_builds_s"], 2), "cells_s": round(ph["phase3_cells_s"], 2),
            "cells": result.counts.cells_computed, "cpu_s": round(ph["computed_cpu_s"], 2)}
        print(f"  {backend:5s} x{workers}, {key[2]} torch thread(s) each: {t:7.1f} s wall  (builds "
              f"{ph['phase1_builds_s']:.1f} s, cells {ph['phase3_cells_s']:.1f} s; {result.counts.cells_computed} "
              f"cells; CPU {ph['computed_cpu_s']:.1f} s)")
    first = next(iter(times))
    for key, t in times.items():
        if key != first:
            print(f"speed-up {key[0]} x{key[1]} ({key[2]} thread each) over {first[0]} x{first[1]} "
                  f"({first[2]} threads): {times[first] / t:.2f}")
    one = ("local", 1, 1)
    for key in (("local", 2, 1), ("ray", 2, 1)):
        if key in times and one in times:
            print(f"speed-up {key[0]} x2 over local x1, one thread per worker in both: {times[one] / times[key]:.2f}")
    same = [rows[k] == rows[("local", 1, 1)] for k in rows if k[2] == 1]
    print(f"runs with one thread per worker give identical cell results: {all(same)} ({len(same)} runs)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.results:
        from mesascope.provenance import write_results

        out = {f"{b} x{w}, {th} thread(s) each": {**row, "speed_up_over_local_x1_1_thread":
                                                   round(times[one] / times[(b, w, th)], 3) if one in times else None}
               for (b, w, th), row in table.items()}
        write_results(args.results, {"bench": "sweep_scaling", "settings": vars(args), "runs": out,
                                     "identical_cell_results_at_one_thread": all(same)},
                      command="python bench/sweep_scaling.py " + shlex.join(sys.argv[1:]))
        print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
