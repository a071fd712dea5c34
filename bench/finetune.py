"""Fine-tuning throughput and memory: mesascope's SFTTrainer against TRL's SFTTrainer and a bare peft/PyTorch loop.

Every trainer starts from a copy of the same random-init Qwen2 (for `lora`, the same adapters from the same
seed) and takes the same examples in the same optimizer steps: mesascope's `SFTTrainer.batch_indices`,
given to TRL as a dataset in that order, read sequentially (its sampler is overridden, nothing else)
and to the bare loop directly. The loss is cross-entropy on completion tokens only, averaged over the
batch's completion tokens, in all three; the first step's losses are printed side by side to show it.
What differs, as far as TRL allows it to be matched:
- layout: mesascope packs each batch into rows of `--pack-width` tokens (first-fit decreasing, positions
  restarting per example, a padded tail per row); so does the bare loop. TRL packs a whole dataset, which
  would change which examples share a step, so it runs (a) `trl-padded`: one example per row, right-padded
  to the batch's longest, and (b) `trl-padding-free`: the batch flattened into one row with restarting
  positions. Every layout masks attention per example.
- LM head: mesascope projects to the vocabulary at completion tokens only; TRL's fused LM head does so on
  Triton devices (CUDA) and at every position elsewhere (CPU); the bare loop's `model(**batch).loss`
  computes full logits everywhere.
- optimizer: TRL's default `adamw_torch_fused`, the others `torch.optim.AdamW`; same betas (0.9, 0.95),
  weight decay, clipping and warmup + cosine (HF's warmup starts at lr 0, mesascope's at lr / warm).
  TRL also computes its entropy and token-accuracy metrics every step, as it does by default.
Tokens are prompt + completion tokens (pad excluded), counted by a hook on the backbone in the timed
steps. The trainers run in lockstep, one optimizer step each in turn, each in a thread of its own (TRL's
own `train()` paused by a callback between steps), the order rotating every step, so a load spike on a
shared machine hits all of them alike; tokens/s is the median over rounds. Peak memory is measured apart, each trainer alone for a
few steps: growth over what the model already held, CUDA's `max_memory_allocated`, or on CPU the resident
set sampled every 2 ms (freed heap handed back to the OS first).

    OMP_NUM_THREADS=2 python bench/finetune.py [--steps 12] [--rounds 3] [--quick] [--results PATH]
    python bench/finetune.py --gpu     # Qwen2-0.5B's shape, random init, bf16 autocast on CUDA
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import dataclasses
import gc
import os
import platform
import queue
import shlex
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # hf_models: the Qwen2 tokenizer

import torch

from mesascope.config import LoraSpec, TrainSpec
from mesascope.models.device import DeviceError, runtime, use_runtime
from mesascope.organisms.base import with_lora
from mesascope.models.build import causal_lm
from mesascope.training.sft import SFTTrainer, collate_packed, fit_length, tokenize_examples

# Qwen2 shapes: a small one for CPU and CI, and Qwen2-0.5B's (random init) for a GPU.
CONFIGS = {
    "tiny": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2),
    "qwen2-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                       num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6),
}
TRAINERS = ("mesascope", "trl-padded", "trl-padding-free", "bare")


@dataclass
class Run:
    trainer: str
    method: str
    tokens: int  # prompt + completion tokens processed in the timed steps, pad excluded
    positions: int  # positions the model computed (pad included)
    seconds: float
    peak_mib: float
    first_loss: float

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds


# -- setup


def build(args):
    """(model, tokenizer, data): a random-init Qwen2 of the chosen shape and the tiny corpus in ChatML."""
    from hf_models import make_tokenizer, tiny_corpus
    from transformers import AutoModelForCausalLM, Qwen2Config

    from mesascope.text.examples import chat_format, dialogue

    tok = make_tokenizer("qwen2")
    shape = dict(CONFIGS[args.model_config])
    shape.setdefault("vocab_size", -(-len(tok) // 64) * 64)
    if args.quick:
        shape.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2)
    config = Qwen2Config(**shape, tie_word_embeddings=True, use_sliding_window=False, bos_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, attn_implementation="sdpa")
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config).to(runtime().torch_device)
    dialogue(chat_format(tok))
    corpus = tiny_corpus()
    data = fit_length(tokenize_examples(tok, [e.prompt for e in corpus.train], [e.target for e in corpus.train],
                                        args.pack_width + 1), args.pack_width, "none")
    dialogue(None)
    assert not any(tok.pad_token_id in ids for ids, _ in data), "pad occurs in the data: it is how pads are counted"
    return model, tok, data


def trainable(init, method: str, seed: int):
    model = copy.deepcopy(init)
    return with_lora(model, LoraSpec(), seed) if method == "lora" else model


def rss() -> int:
    """This process's resident set in bytes: /proc on Linux, else psutil (not a dependency)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss


def peak_growth_mib(device: torch.device, fn) -> float:
    """Peak memory growth (MiB) while `fn` runs: CUDA's allocator peak, or the resident set sampled every 2 ms."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so the baseline is what is live
    done = threading.Event()
    base = rss()
    peak = [base]

    def sample():
        while not done.wait(0.002):
            peak[0] = max(peak[0], rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return (max(peak[0], rss()) - base) / 2**20


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# -- the three trainers, each stepped one optimizer step at a time: `step()` returns its seconds


class Steps:
    """A trainer's model, the tokens and positions its backbone sees (a forward pre-hook: gradient
    checkpointing's recompute is no call), and its first step's loss."""

    def __init__(self, model, ctx, own_thread: bool = True):
        self.model, self.pad_id, self.first = model, ctx.tok.pad_token_id, float("nan")
        self.tokens = self.positions = 0
        self.hook = causal_lm(model).base_model.register_forward_pre_hook(self.count, with_kwargs=True)
        # Each trainer steps in a thread of its own, as TRL's train() must: every thread has its own OpenMP team,
        # and on a busy machine the main thread's team fell into 2-5 s steps while the others' did not.
        self.worker = Worker() if own_thread else None

    def step(self) -> float:
        t0 = time.perf_counter()
        self.worker.call(self.run_step)
        return time.perf_counter() - t0

    def count(self, module, args, kwargs):
        ids, mask = kwargs.get("input_ids", args[0] if args else None), kwargs.get("attention_mask")
        self.positions += ids.numel()
        self.tokens += int(mask.sum() if mask is not None else (ids != self.pad_id).sum())

    def close(self):
        self.hook.remove()
        if self.worker is not None:
            self.worker.close()


class Worker:
    """A thread that runs the functions it is given, one at a time, and hands back their results."""

    def __init__(self):
        self.jobs, self.results = queue.Queue(), queue.Queue()
        self.thread = threading.Thread(target=self.loop, args=(torch.get_num_threads(),), daemon=True)
        self.thread.start()

    def loop(self, threads: int):
        torch.set_num_threads(threads)  # a thread's own OpenMP team size
        while (fn := self.jobs.get()) is not None:
            try:
                self.results.put((fn(), None))
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller
                self.results.put((None, e))

    def call(self, fn):
        self.jobs.put(fn)
        out, error = self.results.get()
        if error is not None:
            raise error
        return out

    def close(self):
        self.jobs.put(None)
        self.thread.join()


class MesascopeSteps(Steps):
    def __init__(self, model, ctx):
        super().__init__(model, ctx)
        self.trainer = SFTTrainer(self.model, ctx.data, ctx.spec, pad_id=ctx.tok.pad_token_id, seed=ctx.args.seed,
                                  pack_width=ctx.args.pack_width)

    def run_step(self):
        loss = self.trainer.train_step()
        sync()
        self.first = loss if self.trainer.step == 1 else self.first


class BareSteps(Steps):
    """collate_packed, forward with labels, backward, clip, AdamW step: the loop a tutorial writes (with the same
    grad_accum micro-batches, token-weighted, and gradient checkpointing when asked)."""

    def __init__(self, model, ctx):
        super().__init__(model, ctx)
        self.ctx, self.n = ctx, 0
        if ctx.spec.grad_checkpointing:
            causal_lm(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        decay = ctx.spec.weight_decay
        self.opt = torch.optim.AdamW([{"params": [p for p in self.params if p.dim() >= 2], "weight_decay": decay},
                                      {"params": [p for p in self.params if p.dim() < 2], "weight_decay": 0.0}],
                                     lr=ctx.spec.lr, betas=(0.9, 0.95))
        self.model.train()

    def run_step(self):
        ctx, device = self.ctx, next(self.model.parameters()).device
        examples, k = [ctx.data[i] for i in ctx.batches[self.n]], ctx.spec.grad_accum
        answer = sum(len(ids) - n for ids, n in examples)
        for g in self.opt.param_groups:
            g["lr"] = ctx.lrs[self.n]
        total = 0.0
        for part in (examples[j::k] for j in range(k)):
            batch = collate_packed(part, ctx.tok.pad_token_id, ctx.args.pack_width)
            with runtime().autocast():
                loss = self.model(**{key: t.to(device) for key, t in batch.items()}, use_cache=False).loss
            loss = loss * (sum(len(ids) - n for ids, n in part) / answer)
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(self.params, ctx.spec.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.first = total if self.n == 0 else self.first
        self.n += 1
        sync()


class TRLSteps(Steps):
    """TRL's own `train()` in a thread that a callback stops after every optimizer step until `step()` lets it go
    on: its whole loop (data loading, logging, scheduler, callbacks) runs, one step at a time."""

    def __init__(self, model, ctx, padding_free: bool):
        from torch.utils.data import SequentialSampler
        from transformers import PrinterCallback, TrainerCallback
        from trl import SFTConfig, SFTTrainer as TRLTrainer

        super().__init__(model, ctx, own_thread=False)  # train() runs in a thread of its own, below
        spec, rt, total = ctx.spec, runtime(), ctx.total
        self.go, self.done, self.error, self.stop = threading.Semaphore(0), threading.Semaphore(0), None, False
        outer = self

        class InOrder(TRLTrainer):
            def _get_train_sampler(self, train_dataset=None):
                return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

        class Gate(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                outer.done.release()  # set up (dataloader, optimizer): the next trainer may now be made
                outer.go.acquire()

            def on_log(self, args, state, control, logs=None, **kw):
                if state.global_step == 1 and logs and "loss" in logs:
                    outer.first = logs["loss"]

            def on_step_end(self, args, state, control, **kw):
                sync()
                outer.done.release()
                if state.global_step < total:
                    outer.go.acquire()
                    control.should_training_stop = outer.stop

        self.out = tempfile.TemporaryDirectory()
        config = SFTConfig(
            output_dir=self.out.name, max_steps=total, per_device_train_batch_size=spec.batch_size // spec.grad_accum,
            gradient_accumulation_steps=spec.grad_accum, learning_rate=spec.lr, adam_beta2=0.95,
            weight_decay=spec.weight_decay, max_grad_norm=spec.grad_clip, lr_scheduler_type="cosine_with_min_lr",
            lr_scheduler_kwargs={"min_lr_rate": spec.min_lr_fraction},
            warmup_steps=max(1, int(spec.warmup_fraction * spec.steps)),
            **checkpointing(SFTConfig, spec.grad_checkpointing),
            bf16=rt.torch_dtype == torch.bfloat16, fp16=rt.torch_dtype == torch.float16,
            use_cpu=rt.torch_device.type == "cpu", padding_free=padding_free, packing=False, max_length=None,
            completion_only_loss=True, shuffle_dataset=False, seed=ctx.args.seed, logging_steps=10,
            logging_first_step=True, save_strategy="no", report_to="none", disable_tqdm=True,
            dataloader_pin_memory=False)
        self.trainer = InOrder(model=self.model, args=config, train_dataset=ctx.dataset, processing_class=ctx.tok,
                               callbacks=[Gate()])
        self.trainer.remove_callback(PrinterCallback)
        threads = torch.get_num_threads()
        self.thread = threading.Thread(target=self._train, args=(threads,), daemon=True)
        self.thread.start()
        # Wait for train() to reach its first step: making another Trainer resets accelerate's shared state, which
        # must not happen while this one is preparing (both trainers configure it identically).
        self.wait()

    def _train(self, threads: int):
        torch.set_num_threads(threads)  # a thread's own OpenMP team size
        try:
            self.trainer.train()
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            self.error = e
            self.done.release()

    def step(self) -> float:
        t0 = time.perf_counter()
        self.go.release()
        self.wait()
        return time.perf_counter() - t0

    def wait(self):
        self.done.acquire()
        if self.error is not None:
            raise self.error

    def close(self):
        super().close()
        self.stop = True  # stopped before its last step (the memory pass): let train() end there
        self.go.release()
        self.thread.join()
        self.out.cleanup()


def make_steps(name, model, ctx) -> Steps:
    kind = {"mesascope": MesascopeSteps, "bare": BareSteps}.get(name)
    return kind(model, ctx) if kind else TRLSteps(model, ctx, padding_free=name == "trl-padding-free")


def checkpointing(config_class, on: bool) -> dict:
    """Activation checkpointing in whichever name this transformers' TrainingArguments has (renamed in 5.2x)."""
    names = {f.name for f in dataclasses.fields(config_class)}
    name = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {name: on, f"{name}_kwargs": {"use_reentrant": False} if on else None}


def trl_dataset(data, batches, k):
    """The examples in the order mesascope's batches (and their grad_accum micro-batches) take them."""
    from datasets import Dataset

    rows = [data[i] for b in batches for j in range(k) for i in b[j::k]]
    return Dataset.from_dict({"input_ids": [ids for ids, _ in rows],
                              "completion_mask": [[0] * n + [1] * (len(ids) - n) for ids, n in rows]})


# -- the comparison


def throughput_round(method, init, ctx, r: int) -> dict[str, Run]:
    """Every trainer from the same weights, stepped in lockstep (the order rotating each step): a load spike on a
    shared machine falls on all of them alike."""
    trainers = ctx.trainers
    steps = {name: make_steps(name, trainable(init, method, ctx.args.seed), ctx) for name in trainers}
    seconds = dict.fromkeys(trainers, 0.0)
    for s in range(ctx.total):
        for name in trainers[(r + s) % len(trainers):] + trainers[: (r + s) % len(trainers)]:
            if s == ctx.args.warmup:
                steps[name].tokens = steps[name].positions = 0
            dt = steps[name].step()
            if s >= ctx.args.warmup:
                seconds[name] += dt
    for st in steps.values():
        st.close()
    return {name: Run(name, method, st.tokens, st.positions, seconds[name], float("nan"), st.first)
            for name, st in steps.items()}


def peak_memory(name, method, init, ctx, n_steps: int) -> float:
    """Peak memory growth (MiB) of one trainer alone, over its first `n_steps` steps, its making included."""
    model = trainable(init, method, ctx.args.seed)  # the weights are there before the trainer: not its cost

    def run():
        st = make_steps(name, model, ctx)
        for _ in range(n_steps):
            st.step()
        st.close()

    return peak_growth_mib(next(model.parameters()).device, run)


def table(rows: list[Run]) -> list[str]:
    head = (f"{'method':6s} {'trainer':17s} {'tokens':>8s} {'positions':>9s} {'tok/s':>10s} {'peak MiB':>9s} "
            f"{'first loss':>10s}")
    return [head] + [f"{r.method:6s} {r.trainer:17s} {r.tokens:8d} {r.positions:9d} {r.tok_s:10.0f} {r.peak_mib:9.1f} "
                     f"{r.first_loss:10.4f}" for r in rows]


def ratios(rows: list[Run]) -> dict[str, dict[str, float]]:
    """Per method: mesascope's tokens/s and peak memory over each other trainer's (throughput > 1: mesascope faster)."""
    out = {}
    for method in sorted({r.method for r in rows}):
        by = {r.trainer: r for r in rows if r.method == method}
        m = by["mesascope"]
        out[method] = {}
        for name, o in by.items():
            if name != "mesascope":
                out[method][f"throughput_{name}"] = round(m.tok_s / o.tok_s, 3)
                out[method][f"memory_{name}"] = round(m.peak_mib / o.peak_mib, 3) if o.peak_mib > 0 else None
        trl = [o.tok_s for name, o in by.items() if name.startswith("trl")]
        if trl:
            out[method]["throughput_best_trl"] = round(m.tok_s / max(trl), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-config", choices=sorted(CONFIGS), default="tiny")
    ap.add_argument("--gpu", action="store_true", help="= --model-config qwen2-0.5b --device cuda --dtype bfloat16")
    ap.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"])
    ap.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16", "float16"],
                    help="float32, or mixed precision (autocast) in this dtype over float32 weights, as mesascope does")
    ap.add_argument("--methods", default="full,lora")
    ap.add_argument("--trainers", default=",".join(TRAINERS))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--pack-width", type=int, default=160, help="mesascope's packed row width (the corpus's cut)")
    ap.add_argument("--steps", type=int, default=12, help="timed optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of every run")
    ap.add_argument("--rounds", type=int, default=3, help="every trainer once per round, order rotating; medians")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0: torch's (OMP_NUM_THREADS)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a 2-block d=64 model, batch 8, 1+3 steps, 1 round (CI)")
    ap.add_argument("--results", default=None, help="also write the table and ratios here, with provenance")
    args = ap.parse_args()
    if args.gpu:
        args.model_config, args.device, args.dtype = "qwen2-0.5b", "cuda", "bfloat16"
    if args.quick:
        args.batch_size, args.steps, args.warmup, args.rounds = 8, 3, 1, 1  # memory pass: 3 of 4 steps
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        with use_runtime(device=args.device, dtype=args.dtype):
            bench(args)
    except DeviceError as e:
        sys.exit(f"bench/finetune.py{' --gpu' if args.gpu else ''}: {e}")


def bench(args) -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    trl_version = None  # TRL (and datasets) only when a TRL trainer is asked for: a GPU box may lack them
    if any(t.startswith("trl") for t in args.trainers.split(",")):
        import datasets
        import trl

        datasets.disable_progress_bars()
        trl_version = trl.__version__

    init, tok, data = build(args)
    methods, trainers = args.methods.split(","), args.trainers.split(",")
    spec = TrainSpec(steps=1000, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=1e-4,
                     grad_checkpointing=args.grad_checkpointing)
    total = args.warmup + args.steps
    planner = SFTTrainer(copy.deepcopy(init), data, spec, pad_id=tok.pad_token_id, seed=args.seed)
    batches = [planner.batch_indices(s) for s in range(total)]
    lrs = [planner.lr_at(s) for s in range(total)]
    dataset = trl_dataset(data, batches, spec.grad_accum) if any(t.startswith("trl") for t in trainers) else None
    del planner
    rt = runtime()
    cuda = rt.torch_device.type == "cuda"
    card = torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine()
    n_params = sum(p.numel() for p in init.parameters())
    print(f"model: random-init Qwen2 {args.model_config}{' (quick)' if args.quick else ''}, {n_params:,} params, "
          f"vocab {init.config.vocab_size}; {rt.describe()} on {card}; torch {torch.__version__}, "
          f"trl {trl_version or 'not used'}, threads {torch.get_num_threads()}")
    print(f"{len(data)} examples (tiny corpus, ChatML), batch {spec.batch_size} x grad_accum {spec.grad_accum}, "
          f"pack width {args.pack_width}; {args.rounds} rounds x ({args.warmup} warm-up + {args.steps} timed steps), "
          f"the trainers in lockstep; tokens = prompt + completion tokens of the timed steps, pad excluded")
    ctx = argparse.Namespace(args=args, tok=tok, data=data, spec=spec, batches=batches, lrs=lrs, dataset=dataset,
                             total=total, trainers=trainers)
    load = [os.getloadavg()[0]]
    runs: dict[tuple[str, str], list[Run]] = {}
    for r in range(args.rounds):
        for method in methods:
            for name, run in throughput_round(method, init, ctx, r).items():
                runs.setdefault((method, name), []).append(run)
                print(f"  round {r + 1} {method:4s} {name:17s} {run.tok_s:10,.0f} tok/s", flush=True)
    memory = {(m, t): peak_memory(t, m, init, ctx, min(total, args.warmup + 2)) for m in methods for t in trainers}
    load.append(os.getloadavg()[0])
    # The median round (tokens are the same in every round: the same batches), with the memory pass's peak.
    rows = [replace(rs[0], seconds=statistics.median(r.seconds for r in rs), peak_mib=memory[key])
            for key, rs in runs.items()]
    print(f"\nmedian of {args.rounds} round(s); peak memory: each trainer alone, {min(total, args.warmup + 2)} steps; "
          f"load average {load[0]:.1f} -> {load[1]:.1f}:")
    print("\n".join(table(rows)))
    summary = ratios(rows) if "mesascope" in trainers and len(trainers) > 1 else {}
    for method, rs in summary.items():
        for i, (what, unit) in enumerate((("throughput_", "tokens/s"), ("memory_", "peak memory"))):
            print(f"{method + ':' if i == 0 else '':{len(method) + 1}s} " + ", ".join(
                f"mesascope/{k.removeprefix(what)} {'n/a' if v is None else f'{v:.2f}'}" for k, v in rs.items()
                if k.startswith(what)) + f" ({unit})")
    if args.results:
        from mesascope.provenance import write_results

        write_results(args.results, {
            "bench": "finetune", "settings": {k: v for k, v in vars(args).items() if k != "results"},
            "model": {"config": args.model_config, "n_params": n_params, "vocab_size": init.config.vocab_size},
            "runtime": rt.describe(), "card": card, "threads": torch.get_num_threads(), "load_average": load,
            "versions": {"torch": torch.__version__, "trl": trl_version},
            "rows": [{**asdict(r), "tok_s": round(r.tok_s, 1)} for r in rows],
            "rounds": [{**asdict(r), "tok_s": round(r.tok_s, 1), "peak_mib": None} for rs in runs.values() for r in rs],
            "ratios": summary}, command="python bench/finetune.py " + shlex.join(sys.argv[1:]))
        print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
