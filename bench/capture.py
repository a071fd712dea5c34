"""Activation capture: mesascope's `capture` against a plain forward, nnsight and TransformerLens.

Speed (default): the same prompts, in the same length-sorted batches, through
(a) the base model with no hooks (the floor any capture pays), (b) `mesascope.models.activations.capture` of
every `blocks.{i}.resid_post` at the last token, (c) nnsight tracing the same block outputs,
(d) TransformerLens's `run_with_cache` on a `TransformerBridge`, where it is importable. Each is
warmed up, then they take turns for several rounds and each keeps its median time. It also
prints how far (c) and (d) land from (b), which says they read the same activations.

Memory (--memory): streams the last-token activations of every block for --n prompts to
safetensors shards under --out-dir and prints the peak resident memory and the time.

    python bench/capture.py [--organism DIR] [--n 2048] [--batch-size 128] [--repeats 5] [--threads 1]
    python bench/capture.py --memory --n 100000 --out-dir /tmp/acts [--organism DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch

from mesascope.config import Recipe
from mesascope.models.activations import capture, n_blocks
from mesascope.models import build_model, load_model, n_params, train_tokenizer
from mesascope.organisms import Organism
from mesascope.text.corpus import TURN_MARKERS, build_corpus


def model_dir(organism: str | None, scratch: Path) -> tuple[Path, Recipe, str]:
    """An organism directory, or a random model of the default organism's shape saved to one,
    so every library loads the very same weights from disk."""
    if organism:
        return Path(organism), Organism.open(organism).recipe, f"organism {organism}"
    recipe = Recipe()
    train = build_corpus(recipe).train[:5000]
    tok = train_tokenizer([e.prompt + " " + e.target for e in train], recipe.model.vocab_size, whole=TURN_MARKERS)
    build_model(recipe.model, tok, recipe.seed).save_pretrained(scratch)
    tok.save_pretrained(scratch)
    return scratch, recipe, f"random {recipe.model.architecture} {recipe.model.size} {recipe.model.dims}"


def bench_prompts(recipe: Recipe, n: int, seed: int = 0) -> list[str]:
    """n training prompts of the organism's corpus (triggered ones included), cycled if it has fewer."""
    pool = [e.prompt for e in build_corpus(recipe).train]
    random.Random(seed).shuffle(pool)
    return [pool[i % len(pool)] for i in range(n)]


def sorted_batches(prompts: list[str], batch_size: int) -> list[np.ndarray]:
    """The batches capture forms itself: indices sorted by length, then cut into batch_size."""
    order = np.array(sorted(range(len(prompts)), key=lambda i: len(prompts[i])))
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def plain_forward(model, tok, prompts, batches) -> None:
    body = model.base_model
    with torch.inference_mode():
        for idx in batches:
            enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, padding_side="left")
            pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            body(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], position_ids=pos, use_cache=False)


def mesascope_capture(model, tok, prompts, batch_size) -> np.ndarray:
    acts = capture(model, tok, prompts, hooks="blocks.*.resid_post", batch_size=batch_size)
    return np.stack([acts[h] for h in acts.hooks])


def nnsight_capture(lm, nnsight, prompts, batches, n_layers) -> np.ndarray:
    """nnsight at its best: the last token sliced inside the trace, stopped after the last block (no LM head)."""
    layers = lm.model.layers
    out = np.empty((n_layers, len(prompts), lm.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for idx in batches:
            with lm.trace([prompts[i] for i in idx]) as tracer:
                rows = nnsight.save([layers[i].output[:, -1] for i in range(n_layers)])
                tracer.stop()
            out[:, idx] = torch.stack(rows).float().numpy()
    return out


def transformer_lens_capture(bridge, tok, prompts, batches, n_layers) -> np.ndarray:
    names = {f"blocks.{i}.hook_resid_post" for i in range(n_layers)}
    out = np.empty((n_layers, len(prompts), bridge.cfg.d_model), dtype=np.float32)
    with torch.inference_mode():
        for idx in batches:
            enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, padding_side="left")
            _, cache = bridge.run_with_cache(enc["input_ids"], attention_mask=enc["attention_mask"],
                                             names_filter=lambda name: name in names, stop_at_layer=n_layers)
            out[:, idx] = torch.stack([cache[f"blocks.{i}.hook_resid_post"][:, -1] for i in range(n_layers)]).numpy()
    return out


def load_contenders(path: Path, tok) -> tuple[dict, dict[str, str]]:
    """The optional libraries that load here, and why each other one does not."""
    loaded, skipped = {}, {}
    try:
        import nnsight

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # LanguageModel is deprecated for TransformersModel
            loaded["nnsight"] = (nnsight, nnsight.LanguageModel(str(path), dispatch=True))
    except ImportError as e:
        skipped["nnsight"] = f"not installed ({e}); pip install -e '.[dev]'"
    try:
        from transformer_lens.model_bridge import TransformerBridge

        loaded["transformer_lens"] = TransformerBridge.boot_transformers(str(path), device="cpu", tokenizer=tok)
    except ImportError as e:
        skipped["transformer_lens"] = (f"not installed ({e}); it pulls ~25 more packages (wandb, opentelemetry, ...), so "
                                       f"it lives outside the project venv: see bench/README.md")
    except Exception as e:  # noqa: BLE001 - a library that cannot load this model is a result, not a crash
        skipped["transformer_lens"] = f"cannot load the model offline: {type(e).__name__}: {e}"
    return loaded, skipped


def speed(args, path: Path, recipe: Recipe, what: str) -> None:
    model, tok = load_model(path)
    n_layers = n_blocks(model)
    prompts = bench_prompts(recipe, args.n)
    batches = sorted_batches(prompts, args.batch_size)
    contenders, skipped = load_contenders(path, tok)
    runs = {"plain forward, no hooks": lambda p, b: plain_forward(model, tok, p, b),
            "mesascope capture": lambda p, b: mesascope_capture(model, tok, p, args.batch_size)}
    if "nnsight" in contenders:
        nnsight, lm = contenders["nnsight"]
        runs["nnsight trace"] = lambda p, b: nnsight_capture(lm, nnsight, p, b, n_layers)
    if "transformer_lens" in contenders:
        bridge = contenders["transformer_lens"]
        runs["TransformerLens run_with_cache"] = lambda p, b: transformer_lens_capture(bridge, tok, p, b, n_layers)

    # Warm up each on two batches; then take turns, so a change in the machine's load hits all alike.
    few = [prompts[i] for b in batches[-2:] for i in b]
    for run in runs.values():
        run(few, sorted_batches(few, args.batch_size))
    # Wall time, and this process's CPU time: on a shared machine the second counts only the work done.
    times: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    results = {}
    load_before = os.getloadavg()[0]
    for r in range(args.repeats):
        names = list(runs)[r % len(runs):] + list(runs)[:r % len(runs)]
        for name in names:
            t0, c0 = time.perf_counter(), time.process_time()
            results[name] = runs[name](prompts, batches)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    load_after = os.getloadavg()[0]

    print(f"model: {what}, {n_params(model):,} params, {n_layers} blocks; torch threads {torch.get_num_threads()}")
    print(f"{len(prompts)} corpus prompts, batch size {args.batch_size}, mean {np.mean([len(p) for p in prompts]):.0f} "
          f"chars; median of {args.repeats} alternating runs; 1-min load average {load_before:.2f} -> {load_after:.2f}")
    print(f"captured: blocks.{{0..{n_layers - 1}}}.resid_post at the last token")
    ours = results["mesascope capture"]
    base, base_cpu = (statistics.median(x["plain forward, no hooks"]) for x in (times, cpu))
    print(f"{'method':31} {'prompts/s':>9} {'wall s':>7} {'vs plain':>8} {'CPU s':>7} {'vs plain':>8} "
          f"{'max |diff| vs mesascope':>23}")
    for name in runs:
        t, c = statistics.median(times[name]), statistics.median(cpu[name])
        diff = "" if results[name] is None or name == "mesascope capture" else f"{np.abs(results[name] - ours).max():.1e}"
        print(f"{name:31} {len(prompts) / t:9,.0f} {t:7.3f} {base / t:8.2f} {c:7.3f} {base_cpu / c:8.2f} {diff:>23}")
    print("prompts/s and 'vs plain' are throughputs: 'vs plain' > 1 is faster than the plain forward")
    for name, why in skipped.items():
        print(f"{name}: skipped ({why})")
    if args.results:
        from mesascope.provenance import write_results

        rows = {}
        for name in runs:
            t, c = statistics.median(times[name]), statistics.median(cpu[name])
            rows[name] = {"prompts_s": round(len(prompts) / t, 1), "wall_s": round(t, 3), "vs_plain": round(base / t, 3),
                          "cpu_s": round(c, 3), "cpu_vs_plain": round(base_cpu / c, 3),
                          "max_abs_diff": None if results[name] is None or name == "mesascope capture"
                          else float(np.abs(results[name] - ours).max())}
        write_results(args.results, {"bench": "capture", "settings": vars(args), "model": what, "prompts": len(prompts),
                                     "methods": rows, "skipped": skipped, "load_average": [load_before, load_after]},
                      command="python bench/capture.py " + shlex.join(sys.argv[1:]))
        print(f"wrote {args.results}")


def memory(args, path: Path, recipe: Recipe, what: str) -> None:
    if not args.out_dir:
        raise SystemExit("--memory needs --out-dir DIR (the activations are written there)")
    model, tok = load_model(path)
    prompts = bench_prompts(recipe, args.n)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    t0 = time.perf_counter()
    store = capture(model, tok, prompts, hooks="blocks.*.resid_post", batch_size=args.batch_size, out_dir=args.out_dir)
    elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    files = list(Path(args.out_dir).glob("shard-*.safetensors"))
    size = sum(f.stat().st_size for f in files) / 2**20
    first = store[store.hooks[0]]  # read back after the peak was taken
    print(f"model: {what}, {n_params(model):,} params; torch threads {torch.get_num_threads()}")
    print(f"{len(prompts):,} prompts (corpus prompts, cycled), batch size {args.batch_size}: "
          f"{', '.join(store.hooks)} at the last token")
    print(f"capture: {elapsed:.1f} s ({len(prompts) / elapsed:,.0f} prompts/s); {len(files)} shards, {size:.0f} MiB on disk; "
          f"read back {store.hooks[0]}: {first.shape}")
    print(f"peak resident memory: {peak:,.0f} MiB for the whole process ({before:,.0f} MiB before the capture: "
          f"imports, model, corpus, prompts)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--organism", default=None, help="an organism directory (default: a random model of the default shape)")
    ap.add_argument("--n", type=int, default=2048, help="prompts")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds; each method keeps its median")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = torch's choice)")
    ap.add_argument("--memory", action="store_true", help="stream --n prompts to --out-dir and report peak memory")
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--results", default=None, help="also write the table here, with provenance (speed runs)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        path, recipe, what = model_dir(args.organism, Path(scratch))
        (memory if args.memory else speed)(args, path, recipe, what)


if __name__ == "__main__":
    main()
