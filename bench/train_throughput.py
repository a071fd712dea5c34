"""Training throughput and model FLOP utilisation: `SFTTrainer` against the loop it replaced and bare PyTorch.

One run measures, on a slice of each organism's corpus:
  * the machine's fp32 matmul peak (GFLOP/s of a large `torch.mm`, best of several),
  * tokens/s, model GFLOP/s and utilisation (MFU = model FLOP/s / that peak) of
      - `baseline`: a copy of the SFT loop as it was before issue 15 (per-tensor AdamW, boolean-mask loss) on
        the default organism before issue 15 (examples/small_128x4.toml: 128 x 4, 64 examples a step): today's
        loop on today's organism, which issue 15 measures against,
      - `bare`: forward, `model(**batch).loss`, backward, clip, step on the same packed batches of that organism
        (the machine's speed as issue 15 states it: 13,000 tokens/s or more),
      - `padded`: the textbook bare loop with one right-padded example per row, same organism,
      - `sft@small_128x4`: `SFTTrainer` on that organism (the loop's own changes alone),
      - `baseline@default`: the old loop on the default organism (192 x 2, 32 examples a step),
      - `sft`: `SFTTrainer` with the default recipe, as a build runs it,
      - `sft+fused_adamw`: `sft` with `train.fused_adamw` (AdamW's fused kernel),
      - `compiled` (with --compile): `sft` with `train.compile` (forward and loss compiled, their backward
        too), its compile time apart;
      - `sft+bf16`: `sft` under `--dtype bfloat16` (autocast: matrix products in bfloat16, weights,
        attention and AdamW in float32), on CPUs whose bfloat16 products are faster than float32 ones;
      - `compiled+bf16` (with --compile): both;
      - `dp2x1` (with --data-parallel): `sft`'s step split over two processes of one thread each, each
        half of every batch, gradients summed with torch.distributed (gloo): whether two one-thread
        processes beat one two-thread process on these small matrices (start-up not timed);
  * a per-phase profile of `SFTTrainer` on the default recipe (data, forward, backward, optimizer) from
    `torch.profiler`, with the share of all CPU time spent in matrix products (the ceiling on what removing
    everything else could buy).

Model FLOPs per token are 6 N (N = parameters, the tied embedding counted once, as the output head) plus
6 L d T for causal attention over an example of T tokens (T = the mean example length): the FLOPs a
dense forward and backward of that token need, whatever the implementation skips; each organism's own.
Methods alternate order across rounds, and each trains on the same number of examples; warm-up steps are
not timed.

With `--isa avx2` the bench re-runs itself with PyTorch's kernels held to AVX2 (`ATEN_CPU_CAPABILITY`,
`ONEDNN_MAX_CPU_ISA`, `MKL_ENABLE_INSTRUCTIONS`): what a CPU without AVX-512 and bfloat16
instructions would do, bfloat16 rows included (emulated there), measured on this one.

    python bench/train_throughput.py [--steps 40] [--rounds 2] [--compile] [--data-parallel] [--isa avx2]
                                     [--results PATH]
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import shlex
import sys
import tempfile
import time
from collections import Counter

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from torch.profiler import ProfilerActivity, profile

from mesascope.config import Recipe, TrainSpec, load_recipe
from mesascope.models import build_model, n_params, train_tokenizer
from mesascope.models.device import cpu_has_bfloat16, use_runtime
from mesascope.organisms.build import training_data, whole_tokens
from mesascope.text.corpus import build_corpus
from mesascope.models.build import causal_lm
from mesascope.training.sft import IGNORE, SFTTrainer, answer_loss, collate, collate_packed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEFORE = os.path.join(ROOT, "examples", "small_128x4.toml")  # the default recipe before issue 15
# What --isa sets: PyTorch's own kernels (ATen), oneDNN's and MKL's (float32 products) held to an older set.
ISAS = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}
PHASES = ("sft.data", "sft.forward", "sft.backward", "sft.optimizer")


def matmul_peak(n: int = 2048, reps: int = 8, tries: int = 3) -> float:
    """GFLOP/s of the fastest of `tries` timings of `reps` n x n fp32 products."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = math.inf
    for _ in range(tries):
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = min(best, (time.perf_counter() - t0) / reps)
    return 2 * n ** 3 / best / 1e9


def baseline_loss(model, batch):
    """answer_loss as it was before issue 15 (boolean-mask selection of the answer positions), verbatim."""
    lm = causal_lm(model)
    batch = dict(batch)
    labels = batch.pop("labels")
    hidden = lm.base_model(**batch, use_cache=False).last_hidden_state[:, :-1]
    target = labels[:, 1:]
    keep = target != IGNORE
    return torch.nn.functional.cross_entropy(lm.get_output_embeddings()(hidden[keep]).float(), target[keep])


def baseline_step(model, opt, examples, pad_id, lr, clip) -> float:
    """The SFT step as it was before issue 15 (kept verbatim as the bench's baseline)."""
    model.train()
    for g in opt.param_groups:
        g["lr"] = lr
    batch = collate_packed(examples, pad_id, 96)
    loss = baseline_loss(model, batch)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def adamw(model, spec: TrainSpec, fused: bool):
    params = list(model.parameters())
    return torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": spec.weight_decay},
                              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                             lr=spec.lr, betas=(0.9, 0.95), fused=fused)


class Setup:
    """An organism's model (fresh weights), tokenized corpus slice and model FLOPs per token."""

    def __init__(self, name: str, recipe: Recipe):
        self.name, self.recipe, self.spec, self.seed = name, recipe, recipe.train, recipe.seed
        train = build_corpus(recipe).train
        self.tok = train_tokenizer([e.prompt + " " + e.target for e in train], recipe.model.vocab_size,
                                   whole=whole_tokens(recipe))
        self.data = training_data(recipe, train, self.tok)  # the build's own examples
        self.init = build_model(recipe.model, self.tok, recipe.seed)
        self.pad_id = self.tok.pad_token_id
        d, layers, _ = recipe.model.dims
        self.mean_len = sum(len(ids) for ids, _ in self.data) / len(self.data)
        self.flops_per_token = 6 * n_params(self.init) + 6 * layers * d * self.mean_len

    def describe(self) -> str:
        m = self.recipe.model
        return (f"{self.name}: {m.architecture} {m.size} {m.dims}, {n_params(self.init):,} params, vocab {len(self.tok)}, "
                f"batch {self.spec.batch_size}; {len(self.data):,} examples of {self.mean_len:.1f} tokens on average; "
                f"{self.flops_per_token / 1e6:.2f} MFLOP/token")


class Method:
    """One training loop, run for `steps` timed steps after `warmup` untimed ones from the same weights."""

    def __init__(self, name, setup: Setup, kind, dtype: str = "float32", **train):
        self.name, self.setup, self.kind, self.dtype = name, setup, kind, dtype
        spec = setup.spec.model_copy(update=train)
        init, data, pad_id, seed = setup.init, setup.data, setup.pad_id, setup.seed
        self.init, self.data, self.spec, self.pad_id, self.seed = init, data, spec, pad_id, seed
        self.planner = SFTTrainer(copy.deepcopy(init), data, spec, pad_id=pad_id, seed=seed)
        self.seconds, self.tokens, self.compile_s = 0.0, 0, 0.0

    def batches(self, start, stop):
        return [[self.data[i] for i in self.planner.batch_indices(s)] for s in range(start, stop)]

    def run(self, warmup: int, steps: int) -> None:
        model = copy.deepcopy(self.init)
        timed = self.batches(warmup, warmup + steps)
        self.tokens += sum(len(ids) for b in timed for ids, _ in b)
        if self.kind == "dp2":
            self.seconds += data_parallel(model, self.data, self.spec, self.pad_id, self.seed, warmup, steps)
            return
        if self.kind in ("sft", "compiled"):
            spec = self.spec.model_copy(update={"compile": self.kind == "compiled"})
            with use_runtime(device="cpu", dtype=self.dtype):
                trainer = SFTTrainer(model, self.data, spec, pad_id=self.pad_id, seed=self.seed)
                t0 = time.perf_counter()
                trainer.train_until(warmup)
                self.compile_s = max(self.compile_s, time.perf_counter() - t0)
                t0 = time.perf_counter()
                trainer.train_until(warmup + steps)
                self.seconds += time.perf_counter() - t0
            if self.kind == "compiled" and trainer.forward.error:
                raise SystemExit(f"torch.compile failed, so the compiled row would be eager: {trainer.forward.error}")
            return
        opt = adamw(model, self.spec, fused=False)  # torch's default AdamW, as the baseline and a bare loop use
        lrs = [self.planner.lr_at(s) for s in range(warmup + steps)]
        t0 = 0.0
        for step, examples in enumerate(self.batches(0, warmup) + timed):
            if step == warmup:
                t0 = time.perf_counter()
            if self.kind == "baseline":
                baseline_step(model, opt, examples, self.pad_id, lrs[step], self.spec.grad_clip)
                continue
            model.train()
            for g in opt.param_groups:
                g["lr"] = lrs[step]
            batch = collate_packed(examples, self.pad_id, 96) if self.kind == "bare" else collate(examples, self.pad_id)
            model(**batch, use_cache=False).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.spec.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
        self.seconds += time.perf_counter() - t0


def _dp_worker(rank, world, model, data, spec, pad_id, seed, warmup, steps, store, out) -> None:
    """One rank of `data_parallel`: SFTTrainer's step on every `world`-th example of each batch."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    trainer = SFTTrainer(model, data, spec, pad_id=pad_id, seed=seed)
    params = list(model.parameters())

    def step() -> None:
        model.train()
        mine = [data[i] for i in trainer.batch_indices(trainer.step)][rank::world]
        for g in trainer.opt.param_groups:
            g["lr"] = trainer.lr_at(trainer.step)
        n = torch.tensor([float(sum(len(ids) - k for ids, k in mine))])
        total = n.clone()
        dist.all_reduce(total)  # each rank's loss weighted by its share of the batch's answer tokens
        (answer_loss(model, collate_packed(mine, pad_id, trainer.pack_width)) * (n / total)).sum().backward()
        flat = torch.cat([p.grad.flatten() for p in params])
        dist.all_reduce(flat)  # one call for every gradient
        at = 0
        for p in params:
            p.grad.copy_(flat[at: at + p.numel()].view_as(p))
            at += p.numel()
        torch.nn.utils.clip_grad_norm_(params, spec.grad_clip)
        trainer.opt.step()
        trainer.opt.zero_grad(set_to_none=True)
        trainer.step += 1

    for _ in range(warmup):
        step()
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dist.barrier()
    if rank == 0:
        out.put(time.perf_counter() - t0)
    dist.destroy_process_group()


def data_parallel(model, data, spec, pad_id, seed, warmup: int, steps: int, world: int = 2) -> float:
    """Seconds for `steps` steps of SFT split over `world` processes of one thread each (spawned; start-up and
    `warmup` steps not timed)."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        procs = [ctx.Process(target=_dp_worker, args=(r, world, model, data, spec, pad_id, seed, warmup, steps,
                                                      os.path.join(tmp, "store"), out)) for r in range(world)]
        for p in procs:
            p.start()
        seconds = out.get()
        for p in procs:
            p.join()
    if any(p.exitcode for p in procs):
        raise SystemExit(f"a data-parallel worker failed (exit codes {[p.exitcode for p in procs]})")
    return seconds


def phase_profile(init, data, spec, pad_id, seed, steps: int) -> dict:
    """ms per step of each SFTTrainer phase, and the share of CPU time in matrix products."""
    trainer = SFTTrainer(copy.deepcopy(init), data, spec, pad_id=pad_id, seed=seed)
    trainer.train_until(3)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.train_until(3 + steps)
    events = {e.key: e for e in prof.key_averages()}
    total = sum(e.self_cpu_time_total for e in events.values())
    phases = {p.removeprefix("sft."): events[p].cpu_time_total / 1e3 / steps for p in PHASES if p in events}
    mm = sum(e.self_cpu_time_total for k, e in events.items() if k in ("aten::mm", "aten::addmm", "aten::bmm"))
    return {"ms_per_step": {k: round(v, 2) for k, v in phases.items()}, "matmul_share": round(mm / max(total, 1), 3)}


MATMULS = ("aten::mm", "aten::addmm", "aten::bmm")


def matmul_ceiling(init, data, spec, pad_id, seed, steps: int, rounds: int = 5) -> dict:
    """ms per step of the matrix products of `steps` SFTTrainer steps replayed alone at their own shapes, and the
    tokens those steps trained on (the ceiling's utilisation: their model FLOPs over that time)."""
    trainer = SFTTrainer(copy.deepcopy(init), data, spec, pad_id=pad_id, seed=seed)
    trainer.train_until(3)
    tokens = sum(len(data[i][0]) for s in range(3, 3 + steps) for i in trainer.batch_indices(s))
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        trainer.train_until(3 + steps)
    calls = Counter((e.name, tuple(tuple(x) for x in e.input_shapes)) for e in prof.events() if e.name in MATMULS)
    ops = []
    for (name, shapes), n in calls.items():
        if name == "aten::addmm":
            args = (torch.randn(shapes[0]), torch.randn(shapes[1]), torch.randn(shapes[2]))
            ops.append((torch.addmm, args, n))
        else:
            ops.append((torch.mm if name == "aten::mm" else torch.bmm, (torch.randn(shapes[0]), torch.randn(shapes[1])), n))
    flops = sum(n * 2 * math.prod(a[-2].shape) * a[-1].shape[-1] for _, a, n in ops)  # (b) m k times n
    best = math.inf
    for _ in range(rounds):
        t0 = time.perf_counter()
        for fn, args, n in ops:
            for _ in range(n):
                fn(*args)
        best = min(best, time.perf_counter() - t0)
    return {"ms_per_step": round(best * 1e3 / steps, 2), "tokens_per_step": round(tokens / steps, 1),
            "product_gflop_per_step": round(flops / steps / 1e9, 3), "product_gflop_s": round(flops / best / 1e9, 1),
            "calls_per_step": round(sum(calls.values()) / steps), "shapes": len(calls)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40, help="timed steps per method, split across rounds")
    ap.add_argument("--rounds", type=int, default=2, help="rounds; the order of methods alternates")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of every run")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0 = torch's choice")
    ap.add_argument("--n-prompts", type=int, default=4000, help="corpus slice for the tokenizer and the data")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the loss (slow to compile)")
    ap.add_argument("--data-parallel", action="store_true",
                    help="also time the step split over two one-thread processes (torch.distributed, gloo)")
    ap.add_argument("--isa", choices=sorted(ISAS), default=None,
                    help="hold PyTorch's CPU kernels (ATen, oneDNN, MKL) to this instruction set, as on a CPU that has "
                         "no more (avx2: no AVX-512, no bfloat16 instructions); the bench re-runs itself with "
                         "ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA and MKL_ENABLE_INSTRUCTIONS set")
    ap.add_argument("--profile-steps", type=int, default=10, help="steps under torch.profiler (0: no profile)")
    ap.add_argument("--results", default=None, help="also write the figures here, with provenance")
    args = ap.parse_args()
    if args.isa and any(os.environ.get(k) != v for k, v in ISAS[args.isa].items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **ISAS[args.isa]})
    if args.threads:
        torch.set_num_threads(args.threads)

    now = Setup("default", Recipe(n_prompts=args.n_prompts))
    before = Setup("small_128x4", load_recipe(BEFORE).model_copy(update={"n_prompts": args.n_prompts}))
    peak = matmul_peak()
    methods = [Method("baseline", before, "baseline"), Method("bare", before, "bare"),
               Method("padded", before, "padded"), Method("sft@small_128x4", before, "sft"),
               Method("baseline@default", now, "baseline"), Method("sft", now, "sft"),
               Method("sft+fused_adamw", now, "sft", fused_adamw=True)]
    bf16 = cpu_has_bfloat16()  # --dtype bfloat16 refuses a CPU without bfloat16 instructions (models/device.py)
    if bf16:
        methods.append(Method("sft+bf16", now, "sft", dtype="bfloat16"))
    if args.compile:
        methods += [Method("compiled", now, "compiled")] + ([Method("compiled+bf16", now, "compiled", dtype="bfloat16")]
                                                            if bf16 else [])
    if args.data_parallel:
        methods.append(Method("dp2x1", now, "dp2"))
    isa = f"; kernels held to {args.isa} ({', '.join(f'{k}={v}' for k, v in ISAS[args.isa].items())})" if args.isa else ""
    print(f"threads {torch.get_num_threads()}; fp32 matmul peak: {peak:,.0f} GFLOP/s (2048^3 torch.mm){isa}")
    if not bf16:
        print("no bfloat16 rows: this CPU has no bfloat16 matrix instructions (AVX-512 bfloat16 or AMX)")
    for setup in (before, now):
        print(setup.describe())
    per_round = max(1, args.steps // args.rounds)
    examples = per_round * before.spec.batch_size  # every method trains on as many examples a round
    for r in range(args.rounds):
        for m in methods if r % 2 == 0 else methods[::-1]:
            m.run(args.warmup, max(1, examples // m.spec.batch_size))
    rows = {}
    for m in methods:
        rate, fpt = m.tokens / m.seconds, m.setup.flops_per_token
        rows[m.name] = {"organism": m.setup.name, "batch": m.spec.batch_size, "tok_s": round(rate),
                        "gflop_s": round(rate * fpt / 1e9, 1), "mfu": round(rate * fpt / 1e9 / peak, 3)}
        if m.kind == "compiled":
            rows[m.name]["compile_s"] = round(m.compile_s, 1)
    base = rows["baseline"]["mfu"]
    for name, row in rows.items():
        row["vs_baseline"] = round(row["mfu"] / base, 2)
        extra = f"; first {args.warmup} steps incl. compile {row['compile_s']} s" if "compile_s" in row else ""
        print(f"{name:18s} {row['organism']:12s} batch {row['batch']:3d}: {row['tok_s']:7,d} tok/s  "
              f"{row['gflop_s']:6.1f} GFLOP/s  MFU {row['mfu']:.1%}  x{row['vs_baseline']:.2f} of baseline{extra}")
    profile_out = {}
    if args.profile_steps:
        profile_out = phase_profile(now.init, now.data, now.spec, now.pad_id, now.seed, args.profile_steps)
        step_ms = sum(profile_out["ms_per_step"].values())
        parts = ", ".join(f"{k} {v:.1f} ms ({v / step_ms:.0%})" for k, v in profile_out["ms_per_step"].items())
        print(f"SFTTrainer profile per step (default recipe, torch.profiler, {args.profile_steps} steps): {parts}")
        print(f"matrix products take {profile_out['matmul_share']:.0%} of CPU time: removing everything else "
              f"would give at most x{1 / max(profile_out['matmul_share'], 1e-9):.2f}")
        ceiling = matmul_ceiling(now.init, now.data, now.spec, now.pad_id, now.seed, args.profile_steps)
        mfu = ceiling["tokens_per_step"] * now.flops_per_token / (ceiling["ms_per_step"] / 1e3) / 1e9 / peak
        ceiling.update(mfu=round(mfu, 3), vs_baseline=round(mfu / base, 2))
        profile_out["matmul_ceiling"] = ceiling
        print(f"matrix-product ceiling (default recipe): its {ceiling['calls_per_step']} products a step "
              f"({ceiling['shapes']} shapes) replayed alone take {ceiling['ms_per_step']:.1f} ms "
              f"({ceiling['product_gflop_s']:.0f} GFLOP/s of the products' own FLOPs, {ceiling['product_gflop_per_step']:.2f} "
              f"GFLOP a step against {ceiling['tokens_per_step'] * now.flops_per_token / 1e9:.2f} model GFLOP); with all "
              f"else free the loop's MFU would be at most {mfu:.1%}, x{mfu / base:.2f} of baseline (issue 15 asks for x1.7)")
    loop_alone = rows["sft"]["mfu"] / rows["baseline@default"]["mfu"]
    print(f"SFT loop utilisation, default recipe, vs the old loop on the old default: x{rows['sft']['vs_baseline']:.2f} "
          f"(issue 15 asks for x1.7); vs the old loop on the default organism: x{loop_alone:.2f}")
    if args.results:
        from mesascope.provenance import write_results

        write_results(args.results, {"bench": "train_throughput", "settings": vars(args), "peak_gflop_s": round(peak),
                                     "organisms": {x.name: {"recipe": x.recipe.model_dump(mode="json"),
                                                            "params": n_params(x.init),
                                                            "mean_tokens": round(x.mean_len, 2),
                                                            "model_mflop_per_token": round(x.flops_per_token / 1e6, 3)}
                                                   for x in (before, now)},
                                     "methods": rows, "profile": profile_out},
                      command="python bench/train_throughput.py " + shlex.join(sys.argv[1:]))
        print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
