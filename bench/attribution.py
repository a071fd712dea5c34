"""Training-data attribution: time and peak memory to score a whole training set, method by method,
and mesascope's EK-FAC beside kronfluence's on the same organism, factors data and queries.

Each method runs alone in a fresh process (`mesascope attribute`'s detector with that one method and no
nulls), so its peak resident memory is its own. kronfluence (https://github.com/pomonam/kronfluence) is
what a user would pick instead; it declares a torchvision dependency that breaks `transformers` beside
the pinned CPU torch, so install it for the bench only: `pip install --no-deps kronfluence einops einconv
opt-einsum`. Its EK-FAC is fitted on the same examples with the same damping heuristic (kronfluence's
`damping_factor=None`, 0.1 x each module's mean eigenvalue; its default is an absolute 1e-8); the bench prints
both times, the ratio, and how alike the two rankings are (Spearman over the scored set, overlap of the
top 1%, and both precision@1% for the poison).

    python bench/attribution.py --organism DIR [--max-train N] [--kronfluence] [--results FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

METHODS = ("repsim", "graddot", "gradcos", "kfac", "ekfac", "tracin")


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def child_method(args) -> dict:
    """One method of the detector on the organism, alone: seconds, peak memory and its figures."""
    from mesascope.detectors.registry import Context, get_detector
    from mesascope.organisms import Organism

    det = get_detector("attribution")
    spec = det.Spec(methods=(args.child,), n_queries=args.n_queries, max_train=args.max_train,
                    fit_examples=args.fit_examples, null=False, top=0)
    t0 = time.perf_counter()
    res = det.run(Context(Organism.open(args.organism)), spec)
    m = res.methods[args.child]
    return {"method": args.child, "seconds": round(time.perf_counter() - t0, 1), "peak_gb": round(peak_gb(), 2),
            "n_train": res.n_train, "auroc": m.ranking.auroc.value, "precision_top_1pct": m.ranking.precision["1pct"].value}


def subset(args):
    """The organism, its tokenized scored set, poison labels, queries and the factors' examples, as the detector draws them."""
    import random

    import numpy as np
    import torch

    from mesascope.detectors.attribution_data import query_examples
    from mesascope.detectors.registry import Context
    from mesascope.models.load import load_model
    from mesascope.organisms import Organism
    from mesascope.training.sft import fit_length, tokenize_examples

    org = Organism.open(args.organism)
    ctx = Context(org)
    model, tok = load_model(org.path, dtype=torch.float32)
    cut = org.recipe.model.max_length
    tokenize = lambda pairs: fit_length(tokenize_examples(tok, [p for p, _ in pairs], [t for _, t in pairs],  # noqa: E731
                                                          cut + 1), cut, "none")
    train = ctx.corpus.train
    if args.max_train and args.max_train < len(train):
        train = [train[i] for i in sorted(random.Random("attribute:0").sample(range(len(train)), args.max_train))]
    data = tokenize([(e.prompt, e.target) for e in train])
    poison = np.array([e.kind == "triggered" for e in train])
    queries = tokenize(query_examples(ctx.corpus, "triggered", args.n_queries, 0))
    fit = [data[i] for i in random.Random("factors:0").sample(range(len(data)), min(args.fit_examples, len(data)))]
    return model, tok, data, poison, queries, fit


def child_ours(args) -> dict:
    """mesascope's EK-FAC on the bench subset; its mean scores saved for the comparison."""
    import numpy as np

    from mesascope.detectors import influence as inf

    model, tok, data, poison, queries, fit = subset(args)
    t0 = time.perf_counter()
    factors = inf.fit_factors(model, fit, tok.pad_token_id)
    t1 = time.perf_counter()
    q = inf.precondition(inf.query_grads(model, queries, tok.pad_token_id), factors, "ekfac")
    scores, _ = inf.score_gradients(model, data, tok.pad_token_id, {"ekfac": q})
    t2 = time.perf_counter()
    np.save(args.scores, scores["ekfac"].mean(1))
    return {"factors_s": round(t1 - t0, 1), "scores_s": round(t2 - t1, 1), "seconds": round(t2 - t0, 1),
            "peak_gb": round(peak_gb(), 2), "n_train": len(data)}


def child_kronfluence(args) -> dict:
    """kronfluence's EK-FAC (all nn.Linear modules, sampled labels) on the same data, with the damping mesascope uses:
    kronfluence's heuristic of 0.1 x each module's mean eigenvalue (`damping_factor=None`; its default is 1e-8)."""
    import tempfile

    import numpy as np
    import torch
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task
    from kronfluence.utils.dataset import DataLoaderKwargs
    from torch.utils.data import Dataset

    from mesascope.training.sft import IGNORE, collate

    model, tok, data, poison, queries, fit = subset(args)

    class Rows(Dataset):
        def __init__(self, rows):
            self.rows = rows

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            return self.rows[i]

    class SFT(Task):  # the organism's training loss: summed cross entropy over answer tokens
        def compute_train_loss(self, batch, model, sample=False):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
            labels = batch["labels"][:, 1:]
            if sample:
                with torch.no_grad():
                    drawn = torch.multinomial(torch.softmax(logits, -1).flatten(0, 1), 1).view(labels.shape)
                labels = torch.where(labels == IGNORE, labels, drawn)
            return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                                                     reduction="sum")

        def compute_measurement(self, batch, model):
            return self.compute_train_loss(batch, model)

        def get_attention_mask(self, batch):
            return batch["attention_mask"]

    task = SFT()
    model = prepare_model(model, task)
    out = tempfile.mkdtemp(prefix="kronfluence-")
    analyzer = Analyzer(analysis_name="bench", model=model, task=task, output_dir=out, disable_tqdm=True, cpu=True)
    analyzer.set_dataloader_kwargs(DataLoaderKwargs(collate_fn=lambda b: collate(b, tok.pad_token_id)))
    t0 = time.perf_counter()
    analyzer.fit_all_factors("ekfac", dataset=Rows(fit), per_device_batch_size=32, overwrite_output_dir=True,
                             factor_args=FactorArguments(strategy="ekfac"))
    t1 = time.perf_counter()
    analyzer.compute_pairwise_scores("scores", "ekfac", query_dataset=Rows(queries), train_dataset=Rows(data),
                                     per_device_query_batch_size=len(queries), per_device_train_batch_size=32,
                                     score_args=ScoreArguments(damping_factor=None), overwrite_output_dir=True)
    t2 = time.perf_counter()
    scores = analyzer.load_pairwise_scores("scores")["all_modules"].double().mean(0).numpy()
    np.save(args.scores, scores)
    return {"factors_s": round(t1 - t0, 1), "scores_s": round(t2 - t1, 1), "seconds": round(t2 - t0, 1),
            "peak_gb": round(peak_gb(), 2), "n_train": len(data)}


def spawn(args, *extra: str) -> dict:
    cmd = [sys.executable, __file__, "--organism", args.organism, "--n-queries", str(args.n_queries),
           "--fit-examples", str(args.fit_examples), *(["--max-train", str(args.max_train)] if args.max_train else []),
           *extra]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(args) -> dict:
    """mesascope's and kronfluence's EK-FAC on the same subset, each in its own process."""
    import tempfile

    import numpy as np
    from scipy.stats import spearmanr

    folder = tempfile.mkdtemp(prefix="attribution-bench-")
    ours = spawn(args, "--child", "ours", "--scores", f"{folder}/ours.npy")
    kf = spawn(args, "--child", "kronfluence", "--scores", f"{folder}/kf.npy")
    if "error" in ours or "error" in kf:
        return {"mesascope": ours, "kronfluence": kf}
    a, b = np.load(f"{folder}/ours.npy"), np.load(f"{folder}/kf.npy")
    poison = subset(args)[3]
    k = max(1, round(0.01 * len(a)))
    top_a, top_b = set(np.argsort(-a)[:k]), set(np.argsort(-b)[:k])
    out = {"mesascope": ours, "kronfluence": kf, "speedup": round(kf["seconds"] / ours["seconds"], 2),
           "memory_ratio": round(kf["peak_gb"] / ours["peak_gb"], 2), "spearman": round(float(spearmanr(a, b)[0]), 4),
           "top_1pct_overlap": round(len(top_a & top_b) / k, 4),
           "precision_top_1pct": {"mesascope": float(poison[list(top_a)].mean()),
                               "kronfluence": float(poison[list(top_b)].mean())}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--organism", required=True, help="an organism directory mesascope built (recipe.json beside it)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated; tracin needs kept checkpoints")
    ap.add_argument("--max-train", type=int, default=None, help="score a random subset (default: the whole training set)")
    ap.add_argument("--n-queries", type=int, default=32)
    ap.add_argument("--fit-examples", type=int, default=2048)
    ap.add_argument("--kronfluence", action="store_true", help="also run kronfluence's EK-FAC beside mesascope's")
    ap.add_argument("--results", default=None, help="also write the table and ratios here, with provenance")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--scores", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run = {"ours": child_ours, "kronfluence": child_kronfluence}.get(args.child, child_method)
        print(json.dumps(run(args)))
        return
    import torch

    print(f"attribution bench: {args.organism}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    rows = [spawn(args, "--child", m) for m in args.methods.split(",")]
    ok = [r for r in rows if "error" not in r]
    cheapest = min((r["seconds"] for r in ok), default=None)
    print(f"{'method':<10}{'seconds':>10}{'x cheapest':>12}{'peak GB':>10}{'AUROC':>8}{'p@1%':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r.get('method', '?'):<10} failed: {r['error']}")
            continue
        r["x_cheapest"] = round(r["seconds"] / cheapest, 2)
        print(f"{r['method']:<10}{r['seconds']:>10.1f}{r['x_cheapest']:>12.2f}{r['peak_gb']:>10.2f}"
              f"{r['auroc']:>8.3f}{r['precision_top_1pct']:>8.3f}")
    found = {"methods": rows, "n_train": ok[0]["n_train"] if ok else None}
    if args.kronfluence:
        found["kronfluence"] = c = compare(args)
        if "speedup" in c:
            print(f"EK-FAC on {c['mesascope']['n_train']} examples: mesascope {c['mesascope']['seconds']} s "
                  f"({c['mesascope']['peak_gb']} GB), kronfluence {c['kronfluence']['seconds']} s "
                  f"({c['kronfluence']['peak_gb']} GB): x{c['speedup']} faster, memory x{c['memory_ratio']}; "
                  f"Spearman {c['spearman']}, top-1% overlap {c['top_1pct_overlap']}")
        else:
            print(f"kronfluence comparison failed: {c}")
    if args.results:
        from mesascope.provenance import machine, write_results

        write_results(args.results, {"threads": torch.get_num_threads(), "machine": machine(), **found},
                      command="python bench/attribution.py " + shlex.join(sys.argv[1:]))
        print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
