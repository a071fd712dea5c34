"""Activation patching: where in the network is the trigger read?

Each pair is one held-out task prompt twice: with the trigger, and with a counterpart string
of the same token length in its place, so every position lines up. At one hook point and one
position we copy the source run's residual stream into the target run and measure how the
log-probability of the behaviour's first k tokens (teacher-forced after the prompt) moves:
- denoising: triggered activations into the clean run (does the behaviour appear?);
- noising: clean activations into the triggered run (does it go away?).
Both are reported raw (nats) and normalised by the clean-to-triggered gap (1 = the whole gap
moves), each averaged over pairs with a bootstrap 95% interval.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from ..config import Spec
from ..models.activations import find_blocks, resid_post
from ..progress import Progress, silent
from ..stats import Measurement
from ..text.corpus import Corpus
from .patch_pairs import (  # noqa: F401  (re-exported: the pairs are part of this detector's API)
    PatchPair, Slot, _ids, filler_strings, make_pairs, position_slots, trigger_span,
)
from .registry import Context, Detector, Result, TextTable, detector

class PatchSpec(Spec):
    """Activation patching between position-aligned triggered / counterpart prompt pairs."""

    n_pairs: int = Field(64, ge=2, description="held-out prompt pairs averaged per heatmap cell")
    k: int = Field(3, ge=1, description="first tokens of the behaviour whose log-probability is the metric")
    counterpart: Literal["near_miss", "filler"] = Field(
        "near_miss", description="what replaces the trigger in the clean run: held-out near misses or random filler")
    n_bootstrap: int = Field(1000, ge=100)
    seed: int = 0


DIRECTIONS = {"denoising": ("clean", "triggered"), "noising": ("triggered", "clean")}  # name -> (target, source)


def patch_points(model: nn.Module) -> list[str]:
    """The embeddings (input of block 0) and the residual stream after every block."""
    return ["blocks.0.resid_pre"] + [resid_post(i) for i in range(len(find_blocks(model)))]


@contextmanager
def edit_residual(model: nn.Module, point: str, fn) -> Iterator[None]:
    """While open, the residual stream at hook point `point` is replaced by fn(hidden [batch, seq, d])."""
    blocks = find_blocks(model)
    parts = point.split(".")
    if len(parts) != 3 or parts[0] != "blocks" or parts[2] not in ("resid_pre", "resid_post") or not parts[1].isdigit():
        raise ValueError(f"hook point {point!r} is not 'blocks.<i>.resid_pre' or 'blocks.<i>.resid_post'")
    block = blocks[int(parts[1])]
    if parts[2] == "resid_post":
        def post(module, args, output):
            # A block returns a tensor in transformers 5 and a tuple (hidden, ...) before it.
            if isinstance(output, torch.Tensor):
                return fn(output)
            return (fn(output[0]), *output[1:])
        handle = block.register_forward_hook(post)
    else:
        def pre(module, args, kwargs):
            if args:
                return (fn(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}
        handle = block.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _batch(tokenizer, prompts: Sequence[str], cont: list[int], device):
    """Left-padded prompt+continuation ids; every row ends at the same column."""
    rows = [_ids(tokenizer, p) + cont for p in prompts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device), [width - len(r) for r in rows]


def _logprob(model, ids, mask, pos, cont: list[int]) -> torch.Tensor:
    """Sum of log P(continuation token j | everything before it), per row."""
    k = len(cont)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
    logp = torch.log_softmax(logits[:, -k - 1:-1].float(), dim=-1)
    target = torch.tensor(cont, device=ids.device).expand(ids.shape[0], k)
    return logp.gather(-1, target[..., None])[..., 0].sum(-1)


@contextmanager
def _capture(model, points: Sequence[str], cache: dict[str, torch.Tensor]) -> Iterator[None]:
    def keep(point):
        def fn(x):
            cache[point] = x.detach().clone()
            return x
        return fn
    with ExitStack() as stack:
        for p in points:
            stack.enter_context(edit_residual(model, p, keep(p)))
        yield


@torch.inference_mode()
def patched_logprobs(model, tokenizer, targets: Sequence[str], sources: Sequence[str], cont: list[int],
                     points: Sequence[str], slots: Sequence[Slot], *, batch_size: int = 64,
                     tick=lambda k: None) -> dict[str, np.ndarray]:
    """log P(cont) for the target run, the source run, and the target run with the source's
    activations patched in at each (point, slot): {"target": [n], "source": [n], "patched": [P, S, n]}.

    targets[i] and sources[i] must tokenize to the same length (positions line up)."""
    model.eval()
    device = next(model.parameters()).device
    n = len(targets)
    if len(sources) != n:
        raise ValueError(f"targets ({n}) and sources ({len(sources)}) must pair up one to one")
    out = {"target": np.zeros(n), "source": np.zeros(n), "patched": np.zeros((len(points), len(slots), n))}
    for start in range(0, n, batch_size):
        rows = range(start, min(n, start + batch_size))
        t_ids, mask, pos, pads = _batch(tokenizer, [targets[i] for i in rows], cont, device)
        s_ids, _, _, s_pads = _batch(tokenizer, [sources[i] for i in rows], cont, device)
        if pads != s_pads:
            raise ValueError("a target and its source tokenize to different lengths: positions would not line up")
        cache: dict[str, torch.Tensor] = {}
        with _capture(model, points, cache):
            out["source"][list(rows)] = _logprob(model, s_ids, mask, pos, cont).cpu().numpy()
        out["target"][list(rows)] = _logprob(model, t_ids, mask, pos, cont).cpu().numpy()
        for c, slot in enumerate(slots):
            where = torch.zeros_like(mask, dtype=torch.bool)
            for r, i in enumerate(rows):
                for p in slot.positions[i]:
                    where[r, pads[r] + p] = True
            for h, point in enumerate(points):
                src = cache[point]
                with edit_residual(model, point, lambda x, src=src: torch.where(where[..., None], src.to(x.dtype), x)):
                    out["patched"][h, c, list(rows)] = _logprob(model, t_ids, mask, pos, cont).cpu().numpy()
                tick(1)
    return out


UNBOUNDED = 1e6  # a share of the clean-to-triggered gap past this means the gap itself is ~0


def _mean_ci(delta: np.ndarray, gap: np.ndarray | None, n_bootstrap: int, seed: int) -> Measurement:
    """Mean of delta over pairs (divided by the mean gap when given), with a percentile bootstrap 95% interval."""
    n = len(delta)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_bootstrap, n))
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = delta[idx].mean(-1) if gap is None else delta[idx].mean(-1) / gap[idx].mean(-1)
        value = delta.mean() if gap is None else delta.mean() / gap.mean()
    # A resample whose gap is 0 makes the share undefined (0/0 is dropped; x/0 is unbounded): when the gap's
    # own interval reaches 0 the normalised interval has no finite bound, written as +-UNBOUNDED so the
    # results file stays valid JSON (a NaN there made it fail its schema, and the next command drop it).
    stat = np.clip(stat, -UNBOUNDED, UNBOUNDED)
    lo, hi = np.nanpercentile(stat, [2.5, 97.5]) if np.isfinite(stat).any() else (-UNBOUNDED, UNBOUNDED)
    return Measurement(float(np.clip(np.nan_to_num(value, nan=0.0), -UNBOUNDED, UNBOUNDED)), (float(lo), float(hi)), n)


def activation_patching(model, tokenizer, pairs: Sequence[PatchPair], response: str, *, k: int = 3,
                        n_end: int = 2, batch_size: int = 64, n_bootstrap: int = 1000, seed: int = 0,
                        progress: Progress = silent, task: str = "patching") -> dict:
    """Denoising and noising heatmaps (hook points x position slots) for the behaviour's first k tokens.

    Result (JSON-ready): `points` (row labels), `positions` (column labels and roles),
    `baseline` log-probs and gap, and per direction `delta` / `normalised` matrices of floats
    beside `delta_ci` / `normalised_ci` matrices of Measurement dicts.
    """
    if not pairs:
        raise ValueError("pairs is empty: build them with make_pairs(tokenizer, corpus, n)")
    if len({p.span for p in pairs}) != 1:
        raise ValueError("every pair must have the same trigger span (make_pairs ensures it)")
    cont = _ids(tokenizer, " " + response)[:k]
    if len(cont) < 1:
        raise ValueError(f"response {response!r} has no tokens to score")
    points = patch_points(model)
    slots = position_slots(tokenizer, pairs, len(cont), n_end)
    n_batches = -(-len(pairs) // batch_size)
    total, done = 2 * n_batches * len(slots) * len(points), [0]

    def tick(j: int) -> None:
        done[0] += j
        progress(task, done[0], total)

    progress(task, 0, total)
    prompts = {"clean": [p.clean for p in pairs], "triggered": [p.triggered for p in pairs]}
    result: dict = {
        "k": len(cont), "behaviour_tokens": [tokenizer.decode([t]) for t in cont],
        "n_pairs": len(pairs), "points": points,
        "positions": [{"label": s.label, "role": s.role} for s in slots],
        "counterparts": dict(Counter(p.counterpart for p in pairs).most_common()),
        "families": dict(Counter(p.family for p in pairs).most_common()),
        "example_pair": {"triggered": pairs[0].triggered, "clean": pairs[0].clean},
    }
    for name, (target, source) in DIRECTIONS.items():
        r = patched_logprobs(model, tokenizer, prompts[target], prompts[source], cont, points, slots,
                             batch_size=batch_size, tick=tick)
        delta = r["patched"] - r["target"]
        gap = r["source"] - r["target"]
        if name == "denoising":
            result["baseline"] = {
                "clean_logprob": _mean_ci(r["target"], None, n_bootstrap, seed).to_dict(),
                "triggered_logprob": _mean_ci(r["source"], None, n_bootstrap, seed).to_dict(),
                "gap": _mean_ci(gap, None, n_bootstrap, seed).to_dict(),
            }
        cells = [[(_mean_ci(delta[h, c], None, n_bootstrap, seed), _mean_ci(delta[h, c], gap, n_bootstrap, seed))
                  for c in range(len(slots))] for h in range(len(points))]
        result[name] = {
            "target": target, "source": source,
            "delta": [[round(d.value, 6) for d, _ in row] for row in cells],
            "normalised": [[round(m.value, 6) for _, m in row] for row in cells],
            "delta_ci": [[d.to_dict() for d, _ in row] for row in cells],
            "normalised_ci": [[m.to_dict() for _, m in row] for row in cells],
        }
    return result


def run_patching(model, tokenizer, corpus: Corpus, response: str, spec, progress: Progress = silent) -> dict:
    """The patching stage for a `config.PatchSpec`: pairs from held-out prompts, both heatmaps.

    With counterpart "near_miss", a trigger whose held-out near misses rarely tokenize to its
    own length (so fewer than half the pairs line up) falls back to random filler strings,
    and the result says so.
    """
    kind, pairs = spec.counterpart, []
    if kind == "near_miss":
        try:
            pairs = make_pairs(tokenizer, corpus, spec.n_pairs, seed=spec.seed)
        except ValueError:
            pairs = []
        if len(pairs) < spec.n_pairs / 2:
            kind = "filler (too few near misses line up with the trigger's tokens)"
    if not kind.startswith("near_miss"):
        pairs = make_pairs(tokenizer, corpus, spec.n_pairs, counterparts=filler_strings(tokenizer, corpus.trigger_spec,
                                                                                      seed=spec.seed), seed=spec.seed)
    result = activation_patching(model, tokenizer, pairs, response, k=spec.k, n_bootstrap=spec.n_bootstrap,
                                 seed=spec.seed, progress=progress)
    return {"counterpart_kind": kind, "n_pairs_requested": spec.n_pairs, **result}


class Position(Result):
    label: str = Field(description="the column's heading: the token patched, or a group of positions")
    role: str = Field(description='"prefix", "trigger", "body", "end", "response" or "all" (every position)')


class ExamplePair(Result):
    triggered: str
    clean: str


class PatchBaseline(Result):
    """Unpatched log P(behaviour's first k tokens), averaged over pairs, and the gap between the two runs."""

    clean_logprob: Measurement
    triggered_logprob: Measurement
    gap: Measurement


class PatchingMap(Result):
    """One heatmap: rows are hook points, columns positions; `normalised` = share of the gap moved."""

    target: str
    source: str
    delta: list[list[float]]
    normalised: list[list[float]]
    delta_ci: list[list[Measurement]]
    normalised_ci: list[list[Measurement]]


class PatchingResult(Result):
    """Both heatmaps (hook points x position slots) and what they were measured on."""

    counterpart_kind: str
    n_pairs_requested: int
    k: int
    behaviour_tokens: list[str]
    n_pairs: int
    points: list[str]
    positions: list[Position]
    counterparts: dict[str, int]
    families: dict[str, int] = {}
    example_pair: ExamplePair
    baseline: PatchBaseline
    denoising: PatchingMap
    noising: PatchingMap


@detector("patching", spec=PatchSpec, result=PatchingResult, command="patch", in_demo=True, rank=20,
          title="Activation patching: where the trigger is read")
class Patching(Detector):
    """Activation patching: which layer and position carry the trigger (denoising and noising heatmaps)."""

    def skip_reason(self, recipe) -> str | None:
        if recipe.reasoning == "cot":
            return ("patching scores the behaviour's first tokens right after the prompt; a cot organism writes "
                    "its scratchpad there first, so the metric would not measure the behaviour")
        if recipe.behaviour_type != "say":
            return ("patching scores the log-probability of one fixed behaviour string; this organism's behaviour "
                    f"({recipe.behaviour_type}) has no single string to score")
        return None

    def run(self, ctx: Context, spec: PatchSpec) -> PatchingResult:
        model, tok = ctx.model
        return PatchingResult(**run_patching(model, tok, ctx.corpus, ctx.recipe.response, spec, ctx.progress))

    def section(self, result: dict) -> str:
        from ..report.detection import patching_section

        return patching_section(result)

    def tables(self, result: PatchingResult) -> list[TextTable]:
        labels = [p.label.replace("\n", "\\n") for p in result.positions]
        out = []
        for name in ("denoising", "noising"):
            m = getattr(result, name)
            t = TextTable(f"Activation patching, {name} ({m.source} into {m.target}): share of the log-prob gap "
                          f"moved, n={result.n_pairs} pairs", ["hook point", *labels])
            t.rows = [[point, *(f"{v:.2f}" for v in row)] for point, row in zip(result.points, m.normalised)]
            out.append(t)
        return out

    def notes(self, result: PatchingResult) -> list[str]:
        positions, den, notes = result.positions, result.denoising.normalised, []
        last = max((c for c, p in enumerate(positions) if p.role == "end"), default=None)
        trig = [c for c, p in enumerate(positions) if p.role == "trigger"]
        if last is not None:
            carried = [h for h, row in enumerate(den) if row[last] >= 0.5]
            where = result.points[carried[0]] if carried else None
            notes.append(f"activation patching ({result.n_pairs} pairs): the triggered run's final-token residual "
                         + (f"first carries half or more of the behaviour's log-prob gap at {where}"
                            if where else "never carries half of the behaviour's log-prob gap at a single layer"))
        if trig:
            best = max((den[h][c], h, c) for h in range(len(den)) for c in trig)
            notes.append(f"activation patching: the largest effect at a trigger position is {best[0]:.2f} of the "
                         f"gap, at {result.points[best[1]]} on token {positions[best[2]].label!r}.")
        return notes
