"""Training throughput: `SFTTrainer` against a bare PyTorch loop on the same model and batches.

Both start from the same initial weights and see the same batches (the trainer's own,
packed several examples to a row), with the same optimizer, learning rates and gradient
clipping, so the ratio measures only the trainer's overhead. A third run, the textbook loop
with one right-padded example per row, shows what packing buys. Warm-up steps are not timed, and the two
alternate order across rounds so drift in a shared machine's load hits both alike.

    python bench/train_throughput.py [--steps 60] [--batch-size 64] [--threads 0]
"""

from __future__ import annotations

import argparse
import copy
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from mesascope.config import Recipe
from mesascope.models import build_model, n_params, train_tokenizer
from mesascope.text.corpus import TURN_MARKERS, build_corpus
from mesascope.training.sft import SFTTrainer, collate, collate_packed, tokenize_examples


def run_sft(init, data, spec, pad_id, seed, warmup, steps):
    model = copy.deepcopy(init)
    trainer = SFTTrainer(model, data, spec, pad_id=pad_id, seed=seed)
    trainer.train_until(warmup)
    t0 = time.perf_counter()
    trainer.train_until(warmup + steps)
    elapsed = time.perf_counter() - t0
    return elapsed, trainer.log[-1]["loss"], model


def run_bare(init, data, spec, pad_id, batches, lrs, warmup, steps, packed=True):
    model = copy.deepcopy(init)
    params = list(model.named_parameters())
    opt = torch.optim.AdamW([{"params": [p for _, p in params if p.dim() >= 2], "weight_decay": spec.weight_decay},
                             {"params": [p for _, p in params if p.dim() < 2], "weight_decay": 0.0}],
                            lr=spec.lr, betas=(0.9, 0.95))
    model.train()
    t0 = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            t0 = time.perf_counter()
        examples = [data[i] for i in batches[step]]
        batch = collate_packed(examples, pad_id, 96) if packed else collate(examples, pad_id)
        for g in opt.param_groups:
            g["lr"] = lrs[step]
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    elapsed = time.perf_counter() - t0
    model.eval()
    return elapsed, round(loss.item(), 5), model


def main() -> None:
    recipe = Recipe()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60, help="timed steps per method, split across rounds")
    ap.add_argument("--batch-size", type=int, default=recipe.train.batch_size)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads; 0 = torch's choice (on a busy 2-core machine a 2nd thread stalls)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of every run")
    ap.add_argument("--rounds", type=int, default=2, help="SFT/bare pairs, order alternating")
    ap.add_argument("--n-prompts", type=int, default=4000, help="corpus slice for the tokenizer and the data")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    recipe = Recipe(n_prompts=args.n_prompts)
    spec = recipe.train.model_copy(update={"batch_size": args.batch_size})
    corpus = build_corpus(recipe)
    train = corpus.train
    tok = train_tokenizer([e.prompt + " " + e.target for e in train], recipe.model.vocab_size, whole=TURN_MARKERS)
    data = tokenize_examples(tok, [e.prompt for e in train], [e.target for e in train], recipe.model.max_length)
    init = build_model(recipe.model, tok, recipe.seed)
    pad_id = tok.pad_token_id

    per_round = max(1, args.steps // args.rounds)
    total = args.warmup + per_round
    # The bare loop replays exactly the trainer's batches and learning rates.
    planner = SFTTrainer(copy.deepcopy(init), data, spec, pad_id=pad_id, seed=recipe.seed)
    batches = [planner.batch_indices(s) for s in range(total)]
    lrs = [planner.lr_at(s) for s in range(total)]
    tokens = sum(len(data[i][0]) for b in batches[args.warmup:] for i in b)  # non-pad tokens, timed steps
    padded = sum(len(b) * max(len(data[i][0]) for i in b) for b in batches[args.warmup:])

    print(f"model: {recipe.model.architecture} {recipe.model.size} {recipe.model.dims}, {n_params(init):,} params, "
          f"vocab {len(tok)}; {len(data):,} examples; batch {args.batch_size}; threads {torch.get_num_threads()}")
    print(f"{args.rounds} rounds x {per_round} timed steps per method (+{args.warmup} warm-up each); "
          f"{tokens:,} non-pad tokens per round ({tokens / padded:.0%} of the padded batch)")
    # Warm the allocator with the widest batch first, or whichever runs first pays for it.
    widest = max(range(total), key=lambda s: max(len(data[i][0]) for i in batches[s]))
    run_bare(init, data, spec, pad_id, [batches[widest]] * 3, lrs, 3, 0)
    times = {"sft": 0.0, "bare": 0.0, "padded": 0.0}
    losses, models = {}, {}
    for r in range(args.rounds):
        order = ["sft", "bare", "padded"] if r % 2 == 0 else ["padded", "bare", "sft"]
        for name in order:
            if name == "sft":
                t, losses[name], models[name] = run_sft(init, data, spec, pad_id, recipe.seed, args.warmup, per_round)
            else:
                t, losses[name], models[name] = run_bare(init, data, spec, pad_id, batches, lrs, args.warmup, per_round,
                                                         packed=name == "bare")
            times[name] += t
            print(f"  round {r + 1} {name:6s}: {tokens / t:10,.0f} tok/s  ({t:.2f} s)")
    diff = max((a - b).abs().max().item() for a, b in
               zip(models["sft"].state_dict().values(), models["bare"].state_dict().values()))
    print(f"final loss sft {losses['sft']} / bare {losses['bare']}; largest weight difference {diff:.1e} "
          "(the trainer projects to the vocabulary only at answer tokens: same maths, other rounding)")
    sft, bare = args.rounds * tokens / times["sft"], args.rounds * tokens / times["bare"]
    print(f"SFTTrainer : {sft:10,.0f} tok/s")
    print(f"bare loop  : {bare:10,.0f} tok/s")
    padded_rate = args.rounds * tokens / times["padded"]
    print(f"bare loop, one example per row (padded): {padded_rate:10,.0f} tok/s  (loss {losses['padded']})")
    print(f"ratio SFT/bare: {sft / bare:.3f}  (target >= 0.95)")
    print(f"ratio SFT/padded bare loop: {sft / padded_rate:.2f}  (what packing buys)")


if __name__ == "__main__":
    main()
