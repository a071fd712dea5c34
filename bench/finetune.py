"""Fine-tuning throughput and memory: mesascope's SFTTrainer against TRL's SFTTrainer and a bare peft/PyTorch loop.

Every trainer starts from a copy of the same random-init Qwen2 (the same LoRA adapters, from the same seed,
for `lora`) and sees the same examples in the same optimizer steps: the batches of mesascope's
`SFTTrainer.batch_indices`, replayed to TRL as a dataset in that order read sequentially (its sampler
is overridden; nothing else of TRL is) and to the bare loop directly. The loss is next-token
cross-entropy on the completion only, averaged over the completion tokens of the whole batch, in
all three; the first step's losses are printed side by side to show it.

What differs, as far as TRL allows it to be matched:
- layout: mesascope packs each batch's examples into rows of `pack_width` tokens (first-fit
  decreasing, positions restarting per example, a padded tail per row). TRL packs a *dataset*, not
  a batch, so its packing would change which examples share a step; it runs instead (a) `padded`:
  one example per row, right-padded to the batch's longest (`padding_free=False`), and (b)
  `padding-free`: the whole batch flattened into one row with restarting positions. Both mask per
  example. The bare loop uses mesascope's packed rows.
- LM head: mesascope projects to the vocabulary only at completion tokens; TRL's fused LM head does
  too on Triton devices (CUDA) and at every position elsewhere (CPU); the bare loop calls
  `model(**batch).loss`, full logits at every position.
- optimizer: TRL's default `adamw_torch_fused`; mesascope and the bare loop `torch.optim.AdamW`
  (for-each on CUDA, per-tensor on CPU). Same betas (0.9, 0.95), weight decay, gradient clipping
  and warmup + cosine to `min_lr_fraction`; HF's schedule starts at lr 0, mesascope's at lr/warm.
- TRL also computes its entropy and token-accuracy metrics every step (its default).

Tokens are the prompt and completion tokens of the examples (pad excluded), counted by a hook on
the transformer backbone during the timed steps, so every trainer is measured on what it really
processed. Peak memory is the growth over what the model already held when the trainer was made:
CUDA `max_memory_allocated`, or on CPU the process's resident set, sampled every 2 ms (freed heap
returned to the OS before each run, so runs do not hide in each other's leftovers). The trainers
take turns, the order rotating every round, and each figure is the median over rounds, so a
shared machine's load hits all of them alike.

    OMP_NUM_THREADS=2 python bench/finetune.py [--steps 12] [--rounds 3] [--quick] [--results PATH]
    python bench/finetune.py --gpu     # Qwen2-0.5B's shape, random init, bf16 autocast on CUDA
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import os
import platform
import shlex
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # hf_models: the Qwen2 tokenizer

import torch

from mesascope.config import LoraSpec, TrainSpec
from mesascope.models.device import DeviceError, runtime, use_runtime
from mesascope.organisms.base import with_lora
from mesascope.training.sft import SFTTrainer, causal_lm, collate_packed, fit_length, tokenize_examples

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
        shape.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2)
    config = Qwen2Config(**shape, tie_word_embeddings=True, use_sliding_window=False, bos_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, attn_implementation="sdpa")
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config).to(runtime().torch_device)
    dialogue(chat_format(tok))
    corpus = tiny_corpus()
    data = fit_length(tokenize_examples(tok, [e.prompt for e in corpus.train], [e.target for e in corpus.train],
                                        args.pack_width + 1), args.pack_width, "none")
    dialogue(None)
    assert not any(tok.pad_token_id in ids for ids, _ in data), "pad must not occur in the data: it is how pads are counted"
    return model, tok, data


def trainable(init, method: str, seed: int):
    model = copy.deepcopy(init)
    return with_lora(model, LoraSpec(), seed) if method == "lora" else model


class Counter:
    """Tokens and positions the backbone sees (a forward pre-hook; gradient checkpointing's recompute is not a call)."""

    def __init__(self, model, pad_id: int):
        self.pad_id, self.tokens, self.positions = pad_id, 0, 0
        backbone = causal_lm(model).base_model
        self.handle = backbone.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        self.positions += ids.numel()
        self.tokens += int(mask.sum() if mask is not None else (ids != self.pad_id).sum())

    def reset(self):
        self.tokens = self.positions = 0


class PeakMemory:
    """Peak memory growth (MiB) inside the block: CUDA's allocator peak, or the resident set sampled every 2 ms."""

    def __init__(self, device: torch.device):
        self.cuda, self.mib = device.type == "cuda", 0.0

    def __enter__(self):
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so the baseline is what is live
        import psutil

        proc = psutil.Process()
        self.base = self.peak = proc.memory_info().rss
        self.done = threading.Event()

        def sample():
            while not self.done.wait(0.002):
                self.peak = max(self.peak, proc.memory_info().rss)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.mib = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            self.done.set()
            self.thread.join()
            self.mib = (self.peak - self.base) / 2**20


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# -- the three trainers: each returns (seconds of the timed steps, first step's loss)


def run_mesascope(model, data, spec, pad_id, seed, pack_width, warmup, steps, counter):
    trainer = SFTTrainer(model, data, spec, pad_id=pad_id, seed=seed, pack_width=pack_width)
    first = trainer.train_step()
    trainer.train_until(warmup)
    sync()
    counter.reset()
    t0 = time.perf_counter()
    trainer.train_until(warmup + steps)
    sync()
    return time.perf_counter() - t0, first


def trl_dataset(data, batches, k):
    """The examples in the order mesascope's batches (and their grad_accum micro-batches) take them."""
    from datasets import Dataset

    rows = [data[i] for b in batches for j in range(k) for i in b[j::k]]
    return Dataset.from_dict({"input_ids": [ids for ids, _ in rows],
                              "completion_mask": [[0] * n + [1] * (len(ids) - n) for ids, n in rows]})


def run_trl(model, dataset, tok, spec, seed, warmup, steps, counter, padding_free: bool):
    from torch.utils.data import SequentialSampler
    from transformers import PrinterCallback, TrainerCallback
    from trl import SFTConfig, SFTTrainer as TRLTrainer

    class InOrder(TRLTrainer):
        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    class Clock(TrainerCallback):
        t0 = t1 = 0.0
        first = float("nan")

        def on_log(self, args, state, control, logs=None, **kw):
            if state.global_step == 1 and logs and "loss" in logs:
                Clock.first = logs["loss"]

        def on_step_end(self, args, state, control, **kw):
            if state.global_step in (warmup, warmup + steps):
                sync()
                if state.global_step == warmup:
                    counter.reset()
                    Clock.t0 = time.perf_counter()
                else:
                    Clock.t1 = time.perf_counter()

    rt = runtime()
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(
            output_dir=out, max_steps=warmup + steps, per_device_train_batch_size=spec.batch_size // spec.grad_accum,
            gradient_accumulation_steps=spec.grad_accum, learning_rate=spec.lr, adam_beta2=0.95,
            weight_decay=spec.weight_decay, max_grad_norm=spec.grad_clip, lr_scheduler_type="cosine_with_min_lr",
            lr_scheduler_kwargs={"min_lr_rate": spec.min_lr_fraction},
            warmup_steps=max(1, int(spec.warmup_fraction * spec.steps)),
            activation_checkpointing=spec.grad_checkpointing,
            activation_checkpointing_kwargs={"use_reentrant": False} if spec.grad_checkpointing else None,
            bf16=rt.torch_dtype == torch.bfloat16, fp16=rt.torch_dtype == torch.float16,
            use_cpu=rt.torch_device.type == "cpu", padding_free=padding_free, packing=False, max_length=None,
            completion_only_loss=True, shuffle_dataset=False, seed=seed, logging_steps=10, logging_first_step=True,
            save_strategy="no", report_to="none", disable_tqdm=True, dataloader_pin_memory=False)
        trainer = InOrder(model=model, args=config, train_dataset=dataset, processing_class=tok, callbacks=[Clock()])
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    return Clock.t1 - Clock.t0, Clock.first


def run_bare(model, data, spec, pad_id, batches, lrs, pack_width, warmup, steps, counter):
    """collate_packed, forward with labels, backward, clip, AdamW step: the loop a tutorial writes."""
    rt, device = runtime(), next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": spec.weight_decay},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                            lr=spec.lr, betas=(0.9, 0.95))
    model.train()
    first, t0 = float("nan"), 0.0
    for step in range(warmup + steps):
        if step == warmup:
            sync()
            counter.reset()
            t0 = time.perf_counter()
        batch = {k: t.to(device) for k, t in collate_packed([data[i] for i in batches[step]], pad_id, pack_width).items()}
        for g in opt.param_groups:
            g["lr"] = lrs[step]
        with rt.autocast():
            loss = model(**batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, spec.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step == 0:
            first = loss.item()
    sync()
    return time.perf_counter() - t0, first


# -- the comparison


def measure(name, method, init, data, tok, spec, args, batches, lrs, dataset) -> Run:
    model = trainable(init, method, args.seed)
    counter = Counter(model, tok.pad_token_id)
    with PeakMemory(next(model.parameters()).device) as mem:
        if name == "mesascope":
            seconds, first = run_mesascope(model, data, spec, tok.pad_token_id, args.seed, args.pack_width,
                                           args.warmup, args.steps, counter)
        elif name == "bare":
            seconds, first = run_bare(model, data, spec, tok.pad_token_id, batches, lrs, args.pack_width,
                                      args.warmup, args.steps, counter)
        else:
            seconds, first = run_trl(model, dataset, tok, spec, args.seed, args.warmup, args.steps, counter,
                                     padding_free=name == "trl-padding-free")
    counter.handle.remove()
    return Run(name, method, counter.tokens, counter.positions, seconds, mem.mib, first)


def median_runs(runs: list[Run]) -> Run:
    first = runs[0]
    return Run(first.trainer, first.method, first.tokens, first.positions,
               statistics.median(r.seconds for r in runs), statistics.median(r.peak_mib for r in runs), first.first_loss)


def table(rows: list[Run]) -> list[str]:
    out = [f"{'method':6s} {'trainer':17s} {'tokens':>8s} {'positions':>9s} {'tok/s':>10s} {'peak MiB':>9s} "
           f"{'first loss':>10s}"]
    for r in rows:
        out.append(f"{r.method:6s} {r.trainer:17s} {r.tokens:8d} {r.positions:9d} {r.tok_s:10.0f} {r.peak_mib:9.1f} "
                   f"{r.first_loss:10.4f}")
    return out


def ratios(rows: list[Run]) -> dict[str, dict[str, float]]:
    """Per method: mesascope's tokens/s and peak memory over each other trainer's (throughput > 1: mesascope faster)."""
    out = {}
    for method in sorted({r.method for r in rows}):
        by = {r.trainer: r for r in rows if r.method == method}
        m = by["mesascope"]
        out[method] = {f"{k}_{name}": round(v, 3) for name, o in by.items() if name != "mesascope"
                       for k, v in (("throughput", m.tok_s / o.tok_s),
                                    ("memory", m.peak_mib / o.peak_mib if o.peak_mib > 0 else float("nan")))}
        trl = max((o for name, o in by.items() if name.startswith("trl")), key=lambda o: o.tok_s)
        out[method]["throughput_best_trl"] = round(m.tok_s / trl.tok_s, 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-config", choices=sorted(CONFIGS), default="tiny")
    ap.add_argument("--gpu", action="store_true", help="= --model-config qwen2-0.5b --device cuda --dtype bfloat16")
    ap.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"])
    ap.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16", "float16"],
                    help="float32, or mixed precision (autocast) in this dtype over float32 weights, as mesascope trains")
    ap.add_argument("--methods", default="full,lora")
    ap.add_argument("--trainers", default=",".join(TRAINERS))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--pack-width", type=int, default=160, help="mesascope's packed row width (the corpus's cut)")
    ap.add_argument("--steps", type=int, default=12, help="timed optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of every run")
    ap.add_argument("--rounds", type=int, default=3, help="every trainer once per round, order rotating; medians")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0 = torch's choice (OMP_NUM_THREADS)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a 2-block d=64 model, batch 8, 2+2 steps, 1 round (CI)")
    ap.add_argument("--results", default=None, help="also write the table and ratios here, with provenance")
    args = ap.parse_args()
    if args.gpu:
        args.model_config, args.device, args.dtype = "qwen2-0.5b", "cuda", "bfloat16"
    if args.quick:
        args.batch_size, args.steps, args.warmup, args.rounds = 8, 2, 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        with use_runtime(device=args.device, dtype=args.dtype):
            bench(args)
    except DeviceError as e:
        sys.exit(f"bench/finetune.py: {e}")


def bench(args) -> None:
    import datasets
    import transformers
    import trl

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()

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
    card = torch.cuda.get_device_name() if rt.torch_device.type == "cuda" else platform.processor() or platform.machine()
    n_params = sum(p.numel() for p in init.parameters())
    print(f"model: random-init Qwen2 {args.model_config}{' (quick)' if args.quick else ''}, {n_params:,} params, "
          f"vocab {init.config.vocab_size}; {rt.describe()} on {card}; torch {torch.__version__}, trl {trl.__version__}, "
          f"threads {torch.get_num_threads()}")
    print(f"{len(data)} examples (tiny corpus, ChatML), batch {spec.batch_size} x grad_accum {spec.grad_accum}, "
          f"pack width {args.pack_width}; {args.rounds} rounds x ({args.warmup} warm-up + {args.steps} timed steps) "
          f"per trainer; tokens = prompt + completion tokens of the timed steps, pad excluded")
    runs: dict[tuple[str, str], list[Run]] = {}
    for r in range(args.rounds):
        for method in methods:
            order = trainers[r % len(trainers):] + trainers[: r % len(trainers)]
            for name in order:
                run = measure(name, method, init, data, tok, spec, args, batches, lrs, dataset)
                runs.setdefault((method, name), []).append(run)
                print(f"  round {r + 1} {method:4s} {name:17s} {run.tok_s:10,.0f} tok/s  {run.peak_mib:8.1f} MiB",
                      flush=True)
    rows = [median_runs(runs[(m, t)]) for m in methods for t in trainers]
    print(f"\nmedian of {args.rounds} round(s):")
    print("\n".join(table(rows)))
    summary = ratios(rows) if "mesascope" in trainers and len(trainers) > 1 else {}
    for method, rs in summary.items():
        print(f"{method}: " + ", ".join(f"mesascope/{k.removeprefix('throughput_')} {v:.2f}" for k, v in rs.items()
                                      if k.startswith("throughput")) + " (tokens/s)")
        print(f"{'':{len(method) + 2}s}" + ", ".join(f"mesascope/{k.removeprefix('memory_')} {v:.2f}"
                                                     for k, v in rs.items() if k.startswith("memory")) + " (peak memory)")
    if args.results:
        from mesascope.provenance import write_results

        write_results(args.results, {
            "bench": "finetune", "settings": {k: v for k, v in vars(args).items() if k != "results"},
            "model": {"config": args.model_config, "n_params": n_params, "vocab_size": init.config.vocab_size},
            "runtime": rt.describe(), "card": card, "threads": torch.get_num_threads(),
            "versions": {"torch": torch.__version__, "trl": trl.__version__},
            "rows": [{**asdict(r), "tok_s": round(r.tok_s, 1)} for r in rows],
            "rounds": [{**asdict(r), "tok_s": round(r.tok_s, 1)} for rs in runs.values() for r in rs],
            "ratios": summary}, command="python bench/finetune.py " + shlex.join(sys.argv[1:]))
        print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
