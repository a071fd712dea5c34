"""The demo's stages after the build: one process with every torch thread against forked one-thread workers.

Builds the default organism once (or reuses it from `--store`), then, in alternating rounds, runs every stage
the demo runs after the build (the measurement, both stress curves, every demo detector) on a fresh run store
holding only that organism: `one process` (what `mesascope demo` did before workers.py: the stages one after
another on all of torch's threads) and `workers` (`Run.in_workers`: each stress curve, detector and the
measurement a task for one of `--workers` forked processes of one thread each). Prints each round's wall time
and the ratio of the means, and checks that both give the same `results.json` figures, bit for bit.

    python bench/demo_stages.py [--rounds 2] [--workers 2] [--store DIR] [--results PATH]
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

import torch

from mesascope.organisms.organism import organism_stage
from mesascope.pipeline import DemoSpec, Run, run_demo
from mesascope.store import RunStore

FIGURES = ("metrics", "per_family", "samples", "stress", "detectors", "notes")


def stages_after_build(spec, organism_dir: str, workers: int) -> tuple[float, dict]:
    """Wall seconds of the demo on a store holding only the organism, and its figures."""
    out = tempfile.mkdtemp(prefix=f"demo-stages-{workers}-")
    try:
        shutil.copytree(organism_dir, os.path.join(out, "runs", os.path.basename(organism_dir)))
        t0 = time.perf_counter()
        results = run_demo(spec, out, workers=workers)
        seconds = time.perf_counter() - t0
        data = results.model_dump(mode="json")
        return seconds, {k: data[k] for k in FIGURES}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of the two ways")
    ap.add_argument("--workers", type=int, default=2, help="forked one-thread workers (default 2)")
    ap.add_argument("--store", default=None, help="a run store holding the default organism (built there if absent)")
    ap.add_argument("--results", default=None, help="also write the timings here, with provenance")
    args = ap.parse_args()

    spec = DemoSpec()
    store = args.store or tempfile.mkdtemp(prefix="demo-stages-organism-")
    run = Run(RunStore(store), spec.recipe)
    run.organism  # noqa: B018 - built (minutes) or reused
    organism_dir = str(organism_stage(run.store, spec.recipe))
    del run
    print(f"default organism in {organism_dir}; {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads; "
          f"load average {os.getloadavg()[0]:.2f}")
    ways = {"one process": 1, "workers": args.workers}
    times: dict[str, list[float]] = {w: [] for w in ways}
    figures = {}
    for r in range(args.rounds):
        for way in (ways if r % 2 == 0 else reversed(ways)):
            t, figures[way] = stages_after_build(spec, organism_dir, ways[way])
            times[way].append(round(t, 2))
            print(f"  round {r + 1}, {way:11s}: {t:6.1f} s")
    mean = {w: sum(ts) / len(ts) for w, ts in times.items()}
    same = figures["one process"] == figures["workers"]
    ratio = mean["one process"] / mean["workers"]
    print(f"workers ({args.workers} x 1 thread) over one process ({torch.get_num_threads()} threads): x{ratio:.2f} "
          f"({mean['one process']:.1f} s -> {mean['workers']:.1f} s); same figures: {same}")
    if args.results:
        from mesascope.provenance import write_results

        write_results(args.results, {"bench": "demo_stages", "settings": vars(args),
                                     "torch_threads": torch.get_num_threads(),
                                     "ways": {w: {"workers": ways[w], "seconds": times[w], "mean_s": round(mean[w], 2)}
                                              for w in ways},
                                     "speed_up": round(ratio, 3), "same_figures": same},
                      command="python bench/demo_stages.py " + shlex.join(sys.argv[1:]))
        print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
