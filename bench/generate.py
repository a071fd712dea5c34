"""Generation throughput: mesascope's batched greedy loop against `model.generate`.

Three ways to answer the same held-out prompts greedily: (a) `mesascope.models.generate`,
(b) `model.generate` one prompt at a time (on a subset, scaled to tokens/s), (c) `model.generate`
on left-padded batches of the same size. (a) and (c) get the same length-sorted batches, so
their ratio is the per-step overhead of `model.generate` alone.

    python bench/generate.py [--organism DIR] [--n-prompts 256] [--max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from mesascope.config import EvalSpec, Recipe
from mesascope.models import build_model, generate, load_model, n_params, train_tokenizer
from mesascope.organisms import Organism
from mesascope.text.corpus import TURN_MARKERS, build_corpus


def hf_generate(model, tok, prompts, max_new_tokens, batch_size):
    """`model.generate` on left-padded batches; returns the new token ids of every prompt, in order."""
    out = []
    for start in range(0, len(prompts), batch_size):
        enc = tok(prompts[start:start + batch_size], return_tensors="pt", padding=True, padding_side="left")
        with torch.inference_mode():
            ids = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        out.extend(ids[:, enc["input_ids"].shape[1]:].tolist())
    return out


def until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos)] if eos in ids else ids


def timed(best: float, fn):
    """min(best, this run's seconds) and fn's result."""
    t0 = time.perf_counter()
    result = fn()
    return min(best, time.perf_counter() - t0), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--organism", default=None,
                    help="a built organism directory (default: a random model of the default shape)")
    ap.add_argument("--n-prompts", type=int, default=256)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=EvalSpec().batch_size)
    ap.add_argument("--one-at-a-time", type=int, default=32, help="prompts for (b), which is slow")
    ap.add_argument("--repeats", type=int, default=3, help="alternating timed runs of (a) and (c); the fastest counts")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads; 0 = torch's choice (on a busy 2-core machine a 2nd thread stalls)")
    ap.add_argument("--results", default=None, help="also write the table and ratios here, with provenance")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.organism:
        recipe = Organism.open(args.organism).recipe
        model, tok = load_model(args.organism)
        what = f"organism {args.organism}"
    else:
        recipe = Recipe()
        corpus = build_corpus(recipe)
        train = corpus.train[:5000]
        tok = train_tokenizer([e.prompt + " " + e.target for e in train], recipe.model.vocab_size, whole=TURN_MARKERS)
        model = build_model(recipe.model, tok, recipe.seed)
        what = f"random {recipe.model.architecture} {recipe.model.size} {recipe.model.dims}"
    model.eval()
    corpus = build_corpus(recipe)
    prompts = [e.prompt for e in corpus.eval_set("clean", args.n_prompts, seed=0)]
    # Length-sorted, as mesascope's generate sorts them, so (a) and (c) pad the same batches.
    prompts.sort(key=len)
    eos, k, bs = tok.eos_token_id, args.max_new_tokens, args.batch_size

    # Warm up every path once (allocator, first-call dispatch) outside the timings; then (a) and
    # (c) alternate, and each keeps its fastest run: load on a shared machine only ever adds time.
    generate(model, tok, prompts[-bs:], max_new_tokens=4, batch_size=bs)
    hf_generate(model, tok, prompts[-bs:], 4, bs)
    t_a = t_c = float("inf")
    for _ in range(args.repeats):
        t_a, texts_a = timed(t_a, lambda: generate(model, tok, prompts, max_new_tokens=k, batch_size=bs))
        t_c, ids_c = timed(t_c, lambda: hf_generate(model, tok, prompts, k, bs))
    sub = prompts[:: max(1, len(prompts) // args.one_at_a_time)][: args.one_at_a_time]
    t_b, ids_b = timed(float("inf"), lambda: hf_generate(model, tok, sub, k, 1))

    # Honest counting: a completion's tokens are those before EOS, at most max_new_tokens. All three
    # are greedy, so (a) emits what (c) emits; its count is taken from (c) once the texts agree.
    new_c = [until_eos(ids, eos) for ids in ids_c]
    n_c = sum(len(ids) for ids in new_c)
    n_b = sum(len(until_eos(ids, eos)) for ids in ids_b)
    texts_c = [tok.decode(ids, skip_special_tokens=True).strip() for ids in new_c]
    agree = sum(a == c for a, c in zip(texts_a, texts_c))
    hit_eos = sum(len(ids) < k for ids in new_c)

    print(f"model: {what}, {n_params(model):,} params; threads {torch.get_num_threads()}")
    print(f"{len(prompts)} held-out prompts, max_new_tokens {k}, batch size {bs}; (b) on {len(sub)} prompts")
    print(f"tokens counted up to EOS or max_new_tokens: {n_c:,} in all, {hit_eos}/{len(prompts)} completions "
          f"ended at EOS (both batched methods run a batch until its last row ends); best of {args.repeats} runs")
    print(f"(a) and (c) give the same text for {agree}/{len(prompts)} prompts")
    rate = {"a": n_c / t_a, "b": n_b / t_b, "c": n_c / t_c}
    print(f"(a) mesascope generate, batched    : {rate['a']:9,.0f} new tok/s  ({t_a:.2f} s)")
    print(f"(b) model.generate, one at a time  : {rate['b']:9,.0f} new tok/s  ({t_b:.2f} s for {len(sub)})")
    print(f"(c) model.generate, batched (left) : {rate['c']:9,.0f} new tok/s  ({t_c:.2f} s)")
    print(f"ratios: (a)/(b) {rate['a'] / rate['b']:.1f}x, (a)/(c) {rate['a'] / rate['c']:.2f}x, "
          f"(c)/(b) {rate['c'] / rate['b']:.1f}x")
    if args.results:
        from mesascope.provenance import write_results

        seconds = {"a": t_a, "b": t_b, "c": t_c}
        names = {"a": "mesascope generate, batched", "b": "model.generate, one at a time",
                 "c": "model.generate, batched (left-padded)"}
        write_results(args.results, {
            "bench": "generate", "settings": vars(args), "model": what, "prompts": len(prompts),
            "methods": {names[m]: {"new_tok_s": round(rate[m], 1), "seconds": round(seconds[m], 3),
                                   "prompts": len(sub) if m == "b" else len(prompts)} for m in "abc"},
            "same_text_as_batched_generate": {"agree": agree, "n": len(prompts)},
            "ratios": {"mesascope/one_at_a_time": round(rate["a"] / rate["b"], 3),
                       "mesascope/batched_generate": round(rate["a"] / rate["c"], 3)}},
            command="python bench/generate.py " + shlex.join(sys.argv[1:]))
        print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
