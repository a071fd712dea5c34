"""Model-written evals throughput: mesascope's batched likelihood scorer against the alternatives.

Scores the same items three ways and prints items/s and ratios:
(a) `mesascope.detectors.mwe.score_likelihood` (length-sorted batches, LM head only at answer tokens);
(b) lm-evaluation-harness's `HFLM.loglikelihood` on the same (prompt, answer) requests, when
    `lm_eval` is installed (`pip install lm_eval accelerate`; it runs offline on a model object);
(c) a naive loop: one forward pass per (item, answer), full logits, explicit sum.
It also prints how often (b) and (c) pick the same answer as (a) and the largest log-prob gap.

    python bench/mwe.py [--model DIR] [--data PATH] [--limit N] [--naive-limit 400] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from mesascope.config import Recipe
from mesascope.detectors.mwe import _encode, context_length, load_evals, score_likelihood
from mesascope.models import build_model, load_model, train_tokenizer
from mesascope.text.corpus import TURN_MARKERS

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/anthropic-evals/advanced-ai-risk/human_generated_evals"


def random_default_model():
    """A random model of the default organism's shape, with a tokenizer trained on dialogue text."""
    texts = [f"Human: question {i} about turning you off?\n\nChoices:\n (A) Yes\n (B) No\n\nAssistant: (A)" for i in range(500)]
    tok = train_tokenizer(texts, Recipe().model.vocab_size, whole=TURN_MARKERS)
    tok.padding_side = "left"
    return build_model(Recipe().model, tok, seed=0).eval(), tok


@torch.inference_mode()
def naive(model, tok, items, max_length):
    """The obvious loop: per (item, answer), one forward pass on prompt + answer, sum the answer's log-probs."""
    out = []
    for item in items:
        ctx, conts, _ = _encode(tok, item, max_length)
        lps = []
        for cont in conts:
            ids = (ctx + cont)[:-1]  # the last token is predicted, not fed
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
            lps.append(sum(float(logp[len(ctx) + j - 1, t]) for j, t in enumerate(cont)))
        out.append(lps)
    return out


def harness(model, tok, items, max_length, batch_size):
    """lm-evaluation-harness's HF backend on the same requests; None (and why) if unavailable."""
    try:
        from lm_eval.api.instance import Instance
        from lm_eval.models.huggingface import HFLM
    except ImportError as e:
        return None, f"lm_eval not installed ({e.name}); pip install lm_eval accelerate"
    lm = HFLM(pretrained=model, tokenizer=tok, device="cpu", batch_size=batch_size, max_length=max_length,
              dtype=torch.float32, logits_cache=False)
    reqs, owner = [], []
    for k, item in enumerate(items):
        for choice in item.choices:
            reqs.append(Instance("loglikelihood", {}, (item.prompt, choice), len(reqs)))
            owner.append(k)
    res = lm.loglikelihood(reqs, disable_tqdm=True)
    out: list[list[float]] = [[] for _ in items]
    for k, (lp, _greedy) in zip(owner, res):
        out[k].append(float(lp))
    return out, None


def picks(lps, items):
    return [max(lp[:len(it.matching)]) > max(lp[len(it.matching):]) for lp, it in zip(lps, items)]


def compare(name, lps, ref_lps, items, secs, ref_rate):
    rate = len(lps) / secs
    agree = sum(a == b for a, b in zip(picks(lps, items), picks(ref_lps, items))) / len(lps)
    gap = max(abs(x - y) for a, b in zip(lps, ref_lps) for x, y in zip(a, b))
    print(f"{name:<34} {rate:9.1f} items/s   mesascope is {ref_rate / rate:5.2f}x   "
          f"same decision {agree:.4f}   max |dlogp| {gap:.2e}   ({len(lps)} items, {secs:.1f} s)")
    return {"items_s": round(rate, 2), "items": len(lps), "seconds": round(secs, 2),
            "mesascope_x": round(ref_rate / rate, 3), "same_decision": round(agree, 4), "max_abs_dlogp": gap}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="organism or HF model directory (default: random default-shape model)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--limit", type=int, help="items per file for (a) and (b)")
    ap.add_argument("--naive-limit", type=int, default=400, help="items for the naive loop (it is slow)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", default=None, help="also write the table here, with provenance")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model) if args.model else random_default_model()
    evals = load_evals(args.data)
    items = [it for name in sorted(evals) for it in (evals[name][:args.limit] if args.limit else evals[name])]
    max_length = context_length(model)
    print(f"{len(items)} items from {args.data}, context {max_length} tokens, {torch.get_num_threads()} threads")

    score_likelihood(model, tok, items[:64], batch_size=args.batch_size)  # warm-up
    t0 = time.perf_counter()
    rows = score_likelihood(model, tok, items, batch_size=args.batch_size)
    secs = time.perf_counter() - t0
    ours = [r["logprobs"] for r in rows]
    rate = len(items) / secs
    print(f"{'(a) mesascope score_likelihood':<34} {rate:9.1f} items/s   ({len(items)} items, {secs:.1f} s)")
    methods = {"mesascope score_likelihood": {"items_s": round(rate, 2), "items": len(items), "seconds": round(secs, 2),
                                              "mesascope_x": 1.0, "same_decision": 1.0, "max_abs_dlogp": 0.0}}

    t0 = time.perf_counter()
    h, why = harness(model, tok, items, max_length, args.batch_size)
    if h is None:
        print(f"(b) lm-evaluation-harness HFLM: skipped: {why}")
    else:
        methods["lm-evaluation-harness HFLM"] = compare("(b) lm-evaluation-harness HFLM", h, ours, items,
                                                        time.perf_counter() - t0, rate)

    sub = items[:args.naive_limit]
    t0 = time.perf_counter()
    n = naive(model, tok, sub, max_length)
    methods["naive one-at-a-time loop"] = compare("(c) naive one-at-a-time loop", n, ours[:len(sub)], sub,
                                                  time.perf_counter() - t0, rate)
    if args.results:
        from mesascope.provenance import write_results

        write_results(args.results, {"bench": "mwe", "settings": {k: str(v) for k, v in vars(args).items()},
                                     "model": str(args.model or "random default-shape model"), "methods": methods,
                                     "skipped": {} if h is not None else {"lm-evaluation-harness HFLM": why}},
                      command="python bench/mwe.py " + shlex.join(sys.argv[1:]))
        print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
