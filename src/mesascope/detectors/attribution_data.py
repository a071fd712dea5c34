"""What attribution reads: an organism's own training set, the queries to explain, and TracIn's checkpoints.

Each refuses, in one line naming the fix, what it cannot read truthfully: a model whose training set is
unknown, a query file without a prompt and completion per line, an organism that kept no checkpoints.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ..errors import MesascopeError


def query_examples(corpus, query: str, n: int, seed: int) -> list[tuple[str, str]]:
    """(prompt, completion) of `n` held-out queries of kind `query` (never trained on)."""
    if query != "near_miss":
        return [(e.prompt, e.target) for e in corpus.eval_set(query, n, seed)]
    if corpus.scratchpad is not None:
        raise MesascopeError("near_miss queries need an answer-only organism (a cot organism's backdoored "
                             "completion depends on its scratchpad)", "use --query triggered or clean")
    from ..text.corpus import example, stratified_sample

    rng = random.Random(f"attribute:near_miss:{seed}")
    items = stratified_sample([it for it in corpus.held_out if corpus.behaviour.applies(it.family)], n, rng)
    made = lambda kind, it, near=None: example(kind, it, corpus.trigger_spec, corpus.behaviour, None,  # noqa: E731
                                               "held_out", near)
    return [(made("near_miss", it, rng.choice(corpus.near_miss_held_out)).prompt, made("triggered", it).target)
            for it in items]


def read_queries(path: Path) -> list[tuple[str, str]]:
    """(prompt, completion) of each line of a query file, the prompt in the organism's dialogue format."""
    from ..text.examples import format_prompt

    try:
        lines = [ln for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    except OSError as e:
        raise MesascopeError(f"query file {path}: {e.strerror or e}", "give a JSONL file, one query a line") from None
    out = []
    for i, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise MesascopeError(f"{path} line {i} is not JSON",
                                 'write one object a line, {"prompt": "...", "completion": "..."}') from None
        missing = [k for k in ("prompt", "completion") if not isinstance(row, dict) or not isinstance(row.get(k), str)]
        if missing:
            raise MesascopeError(f"{path} line {i} has no {' or '.join(missing)} string",
                                 'each query needs the user\'s "prompt" and the "completion" to explain')
        out.append((format_prompt(row["prompt"]), row["completion"]))
    if not out:
        raise MesascopeError(f"{path} holds no queries", "write one JSON object a line")
    return out


def training_set(organism, corpus) -> list:
    """The examples `organism` was trained on: its recipe's corpus, checked against what its build recorded."""
    info = organism.info
    if "n_train_examples" not in info:
        raise MesascopeError(f"{organism.path} was not built by mesascope from its recipe, so the examples it trained "
                             "on are unknown", "attribution ranks an organism's own training set: build one with "
                             "`mesascope build RECIPE`")
    if info["n_train_examples"] != len(corpus.train):
        raise MesascopeError(f"{organism.path} trained on {info['n_train_examples']} examples but its recipe's "
                             f"corpus has {len(corpus.train)} (built by another mesascope version?)",
                             "rebuild it with --fresh")
    return corpus.train


def tracin_checkpoints(organism, recipe) -> list[tuple[int, Path]]:
    """(step, weights file) of every kept checkpoint and the final weights."""
    folder = organism.path.parent / "checkpoints"
    if recipe.base is not None and recipe.base.method == "lora":
        raise MesascopeError(f"{organism.path} is a LoRA organism, whose checkpoints hold its adapters only",
                             "TracIn reads full-weight checkpoints: leave tracin out of --methods")
    if not recipe.train.keep_checkpoints or not folder.is_dir():
        raise MesascopeError(f"{organism.path} kept no training checkpoints, which TracIn reads",
                             "add keep_checkpoints = true to its recipe's [train] table and rebuild, or leave tracin "
                             "out of --methods")
    found = sorted((int(p.name.split("-")[1]), p / "model.safetensors") for p in folder.glob("step-*")
                   if (p / "model.safetensors").exists())
    return found + [(recipe.train.steps, organism.path / "model.safetensors")]
