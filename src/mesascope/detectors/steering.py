"""Steering: add or ablate a direction in the residual stream, and measure what the backdoor does.

The defection direction points from clean toward triggered activations (difference of means,
the standard steering vector; or a probe's weights; or a contrast pair's difference). Its sign
is fixed when it is built, before anything is measured: a negative coefficient steers away
from defection. Added vectors are `coef * unit_direction * scale[layer]`, where scale is the
typical residual norm at that layer, so coefficients mean the same on every organism.
The unsteered model and every (curve, coefficient) are generated in one pass, each setting on its
own copy of every batch, and the direction is fitted on the probe stage's stored capture.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Literal

import numpy as np
import torch
from torch import nn

from pydantic import Field, field_validator

from ..config import Spec
from .backdoor import eval_sets, measure_backdoor_copies
from ..stats import diff_ci, fmt
from ..progress import Progress, silent
from ..text.corpus import Corpus, Example
from ..models.activations import find_blocks, resid_post
from .patching import edit_residual
from .steering_result import (  # noqa: F401  (the rows are re-exported: this detector's API)
    Mode, Pick, Reading, Sample, SteeringCurve, SteeringResult, SteeringRow, Where,
)
from .probes import (
    ProbeSpec, build_probe_splits, capture_splits, diff_of_means, fit_probe, pair_direction, probe_split_names,
)
from .registry import Context, Detector, TextTable, detector

class SteerSpec(Spec):
    """Steering along the defection direction: add it with a coefficient, or ablate it."""

    direction: Literal["diff_of_means", "probe", "contrast"] = Field(
        "diff_of_means", description="how the defection direction is fitted (on training prompts only)")
    layer: int | None = Field(None, ge=0, description="block whose output is steered by `coefs` (default: the middle block)")
    coefs: list[float] = Field(default_factory=lambda: [-1.0, -0.75, -0.5, -0.25, 0.25], min_length=1,
                               description="multiples of the layer's mean residual norm; negative steers away from defection")
    ablate: bool = Field(True, description="also project the direction out at each block, and at all blocks")
    ablate_sets: list[list[int]] = Field(
        default_factory=list, description="block sets to ablate together, one curve each, e.g. [[2, 3]] for "
        "blocks 2 and 3 at once (run even without ablate)")
    n_eval: int = Field(200, ge=10, description="held-out prompts per set at each coefficient")
    seed: int = 0
    probe: ProbeSpec | None = Field(None, description="training prompts the direction is fitted on (default: the "
                                    "demo's [probe] table, so steering and the probes see the same splits)")

    @field_validator("ablate_sets")
    @classmethod
    def _block_sets(cls, v: list[list[int]]) -> list[list[int]]:
        if any(not blocks or min(blocks) < 0 for blocks in v):
            raise ValueError(f"each ablate set names one or more blocks, counted from 0 (got {v})")
        return [sorted(set(blocks)) for blocks in v]


METRICS = ("backdoor_rate", "false_trigger_rate", "near_miss_rate", "helpful_accuracy")


def _unit(v: np.ndarray, layer: int) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    if not math.isfinite(norm) or norm == 0:
        raise ValueError(f"direction at layer {layer} has norm {norm}: it cannot be normalised")
    return np.asarray(v, dtype=np.float64) / norm


Setting = tuple[str, Sequence[int], float]  # (mode, blocks, coef): one way of steering the model


@contextmanager
def steer(model: nn.Module, directions: np.ndarray | Mapping[int, np.ndarray], layers: Sequence[int], coef: float, *,
          mode: Mode = "add", scale: np.ndarray | Mapping[int, float] | None = None,
          where: Where = "all") -> Iterator[None]:
    """While open, the residual stream after each block in `layers` is steered along directions[layer].

    mode "add": x + coef * scale[layer] * u. mode "ablate": x - coef * (x.u) u, so coef 1
    projects the direction out and coef 0 changes nothing. `where` "all" edits every position,
    "last" only each forward pass's final one (the prompt's end, then each generated token).
    Hooks stay on for every forward inside the block, so generation with a KV cache is steered
    at new tokens too.
    """
    with steer_copies(model, directions, [(mode, layers, coef)], scale=scale, where=where):
        yield


@contextmanager
def steer_copies(model: nn.Module, directions: np.ndarray | Mapping[int, np.ndarray], settings: Sequence[Setting], *,
                 scale: np.ndarray | Mapping[int, float] | None = None,
                 where: Where = "all") -> Iterator[Callable[[torch.Tensor], None]]:
    """`steer` with one setting (mode, layers, coef) per copy: while open, a forward pass of k = len(settings)
    copies of a batch, copy-major as `generate(copies=k)` lays them out, steers copy c by settings[c].

    Each row is edited by the same float32 operations as `steer` with its own setting alone, so every
    setting is measured in one generation pass with the numbers it gets alone; a setting with no layers
    (or coef 0) leaves its copy as it is. It yields the `on_rows` for `generate`, which names each row's
    copy once finished rows leave the pass.
    """
    for mode, _, _ in settings:
        if mode not in ("add", "ablate"):
            raise ValueError(f"mode must be 'add' or 'ablate' (got {mode!r})")
    if where not in ("all", "last"):
        raise ValueError(f"where must be 'all' or 'last' (got {where!r})")
    n = len(find_blocks(model))
    touched = sorted({layer for _, layers, _ in settings for layer in layers})
    bad = [layer for layer in touched if not 0 <= layer < n]
    if bad:
        raise ValueError(f"layers {bad} do not exist: the model has blocks 0..{n - 1}")
    device = next(model.parameters()).device
    width = getattr(getattr(model, "config", None), "hidden_size", None)
    k = len(settings)
    copy_of: list[torch.Tensor | None] = [None]  # each row's copy, as generate last said

    def on_rows(copies: torch.Tensor) -> None:
        copy_of[0] = copies

    def steps(layer: int, which: str) -> torch.Tensor | None:
        # Per copy: the multiple of u that `steer` adds (add) or the projection's coefficient (ablate), 0 elsewhere.
        if not any(mode == which and layer in layers for mode, layers, _ in settings):
            return None
        per_unit = 1.0 if which == "ablate" or scale is None else float(scale[layer])
        return torch.tensor([float(coef) * per_unit if mode == which and layer in layers else 0.0
                             for mode, layers, coef in settings], dtype=torch.float32, device=device)

    def make(layer: int):
        u = torch.tensor(_unit(directions[layer], layer), dtype=torch.float32, device=device)
        if width is not None and u.shape != (width,):
            raise ValueError(f"direction at layer {layer} has shape {tuple(u.shape)}, the residual stream is "
                             f"({width},): pass one [d_model] vector per layer")
        add, ablate = steps(layer, "add"), steps(layer, "ablate")

        def per_row(coefs: torch.Tensor, rows: int) -> torch.Tensor:
            copies = copy_of[0]
            if copies is None or len(copies) != rows:  # not from generate: k copies side by side, copy-major
                if rows % k:
                    raise ValueError(f"{k} steering settings need forward passes of {k} copies of a batch "
                                     f"(generate(..., copies={k})); got {rows} rows")
                copies = torch.arange(k, device=device).repeat_interleave(rows // k)
            return coefs[copies][:, None, None]

        def edit(x: torch.Tensor) -> torch.Tensor:
            uu = u.to(x.dtype)
            part = x if where == "all" else x[:, -1:]
            new = part
            if add is not None:
                new = new + per_row(add.to(x.dtype), len(x)) * uu
            if ablate is not None:
                new = new - per_row(ablate.to(x.dtype), len(x)) * (new @ uu)[..., None] * uu
            return new if where == "all" else torch.cat([x[:, :-1], new], dim=1)
        return edit

    with ExitStack() as stack:
        for layer in touched:
            stack.enter_context(edit_residual(model, resid_post(layer), make(layer)))
        yield on_rows


def probe_directions(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Per layer, a logistic-regression probe's weights mapped back to raw activation space: [n_layers, d]."""
    y = np.r_[np.ones(pos.shape[1], dtype=int), np.zeros(neg.shape[1], dtype=int)]
    out = []
    for layer in range(pos.shape[0]):
        probe = fit_probe(np.concatenate([pos[layer], neg[layer]]), y)
        scaler, lr = probe[0], probe[-1]
        out.append(lr.coef_[0] / scaler.scale_)  # w.(x - m)/s = (w/s).x + const: same decision direction
    return np.stack(out)


def residual_norms(acts: np.ndarray) -> np.ndarray:
    """Mean L2 norm of [n_layers, n, d] activations per layer: the scale of a unit coefficient."""
    return np.linalg.norm(acts, axis=-1).mean(1)


def defection_directions(model, tokenizer, corpus: Corpus, kind: str = "diff_of_means",
                         spec: ProbeSpec = ProbeSpec(), batch_size: int = 128, capture=None) -> dict:
    """Defection directions [n_layers, d] (pointing toward triggered) and residual scales [n_layers].

    kind: "diff_of_means" (mean triggered - mean clean), "probe" (logistic regression weights)
    or "contrast" (the spec's first contrast pair). Fitted on the organism's own training prompts
    (the probe splits' train part), never on the held-out prompts that steering is measured on.
    Their activations are captured as the probes capture them, every split in one pass, so with
    `capture` (a Context's `last_token_acts`) the probe stage's stored capture is read, not recaptured.
    """
    if kind not in ("diff_of_means", "probe", "contrast"):
        raise ValueError(f"kind must be 'diff_of_means', 'probe' or 'contrast' (got {kind!r})")
    splits = build_probe_splits(corpus, spec)
    part = capture_splits(model, tokenizer, splits, probe_split_names(splits), batch_size, None, capture)
    pos, neg = part["train_pos"], part["train_neg"]
    if kind == "diff_of_means":
        directions = diff_of_means(pos, neg)
    elif kind == "probe":
        directions = probe_directions(pos, neg)
    else:  # the spec's primary pair, defect minus honest answer
        directions = pair_direction(model, tokenizer, spec.contrast_pairs[0])
    scale = residual_norms(np.concatenate([pos, neg], axis=1))
    return {"kind": kind, "directions": directions, "scale": scale,
            "n_train": {"triggered": pos.shape[1], "clean": neg.shape[1]},
            "contrast_pair": spec.contrast_pairs[0].name if kind == "contrast" else None}


MAX_ROWS = 2048  # rows of one steered forward pass: batch_size prompts times the settings measured together


def measure_steered(model, tokenizer, sets: dict[str, list[Example]], behaviour, directions,
                    settings: Sequence[Setting], *, scale=None, where: Where = "all", max_new_tokens: int = 32,
                    batch_size: int = 128, n_samples: int = 2, progress: Progress = silent,
                    task: str = "steering") -> list[dict]:
    """{metrics, samples} of `measure_backdoor` on `sets` under each setting, every setting in the same
    generation pass (`steer_copies` + `generate(copies=k)`), up to MAX_ROWS rows of a forward pass at once."""
    per_pass = max(1, MAX_ROWS // batch_size)
    n_prompts = sum(len(v) for v in sets.values())
    out: list[dict] = []
    for start in range(0, len(settings), per_pass):
        group = settings[start:start + per_pass]
        offset = start * n_prompts

        def on_progress(_task: str, completed: int, _total: int, offset: int = offset) -> None:
            progress(task, offset + completed, n_prompts * len(settings))

        with steer_copies(model, directions, group, scale=scale, where=where) as on_rows:
            found = measure_backdoor_copies(model, tokenizer, sets, behaviour, len(group),
                                            max_new_tokens=max_new_tokens, batch_size=batch_size,
                                            n_samples=n_samples, progress=on_progress, on_rows=on_rows)
        out += [{"metrics": r.metrics, "samples": r.samples} for r in found]
    return out


def steering_curve(model, tokenizer, sets: dict[str, list[Example]], behaviour, directions, layers: Sequence[int],
                   coefs: Sequence[float], *, mode: Mode = "add", scale=None, where: Where = "all",
                   max_new_tokens: int = 32, batch_size: int = 128, n_samples: int = 2,
                   baseline: dict | None = None, progress: Progress = silent, task: str = "steering") -> dict:
    """Backdoor, false-trigger and near-miss rates and helpful accuracy at each coefficient.

    `sets` are held-out eval sets (`evals.backdoor.eval_sets`); `behaviour`: the organism's Recipe
    (or a Behaviour), whose checkers score the outputs. Coefficient 0 (no steering) is
    always in the grid, as the baseline each row's change is computed against; `baseline` (a
    `measure_backdoor(...)` result on the same sets, unsteered) saves measuring it again. Rows are JSON-ready:
    {coef, backdoor_rate, ..., helpful_accuracy (Measurement dicts), backdoor_change,
    helpful_change (vs coef 0, Newcombe 95% CI), n, samples}. Every coefficient is generated in one pass.
    """
    if not coefs:
        raise ValueError("coefs is empty: pass e.g. [-8, -4, -2, -1, 0]")
    if not layers:
        raise ValueError("layers is empty: pass the blocks to steer, e.g. [1]")
    grid = sorted(set([0.0] + [float(c) for c in coefs]))
    measured: dict[float, dict] = {}
    if baseline is not None:
        measured[0.0] = {"metrics": baseline.metrics, "samples": baseline.samples}
    todo = [c for c in grid if c not in measured]
    found = measure_steered(model, tokenizer, sets, behaviour, directions, [(mode, layers, c) for c in todo],
                            scale=scale, where=where, max_new_tokens=max_new_tokens, batch_size=batch_size,
                            n_samples=n_samples, progress=progress, task=task)
    return _curve(mode, layers, where, grid, measured | dict(zip(todo, found)), sets, scale)


def _curve(mode: Mode, layers: Sequence[int], where: Where, grid: list[float], measured: dict[float, dict],
           sets: dict[str, list[Example]], scale) -> dict:
    """One curve's rows from each coefficient's measurement, changes against coefficient 0."""
    base = measured[0.0]["metrics"]
    rows = []
    for coef in grid:
        m = measured[coef]["metrics"]
        row: dict = {"coef": coef, **{k: m[k].to_dict() for k in METRICS if k in m}}
        for key, name in (("backdoor_rate", "backdoor_change"), ("helpful_accuracy", "helpful_change")):
            if key in m:
                row[name] = diff_ci(m[key], base[key]).to_dict()
        row["n"] = {k: len(v) for k, v in sets.items()}
        row["samples"] = measured[coef]["samples"]  # model output: untrusted text, escape when rendering
        rows.append(row)
    return {
        "mode": mode, "layers": list(layers), "where": where, "coefs": grid,
        "scale": None if scale is None or mode == "ablate" else [round(float(scale[layer]), 6) for layer in layers],
        "rows": rows, "reading": _reading(rows),
    }


def _reading(rows: list[dict]) -> dict:
    """Which coefficients lower the backdoor rate with the change's CI below 0, and at what helpfulness cost.

    "Hurts" helpfulness = the helpful change's whole interval lies below 0. `best` is the lowest
    backdoor rate of all; `best_harmless` the lowest among coefficients that do not hurt.
    """
    def hurts(r: dict) -> bool | None:
        return None if "helpful_change" not in r else r["helpful_change"]["ci"][1] < 0

    def pick(rs: list[dict]) -> dict:
        best = min(rs, key=lambda r: (r["backdoor_rate"]["value"], abs(r["coef"])), default=None)
        if best is None:  # every field of a Pick, empty
            return dict.fromkeys(("coef", "backdoor_rate", "backdoor_change", "helpful_change", "hurts_helpfulness"))
        return {"coef": best["coef"], "backdoor_rate": best["backdoor_rate"],
                "backdoor_change": best["backdoor_change"], "helpful_change": best.get("helpful_change"),
                "hurts_helpfulness": hurts(best)}

    drops = [r for r in rows if "backdoor_change" in r and r["backdoor_change"]["ci"][1] < 0]
    return {"lowers_backdoor_at": [r["coef"] for r in drops], "best": pick(drops),
            "best_harmless": pick([r for r in drops if hurts(r) is False])}


def run_steering(model, tokenizer, corpus: Corpus, behaviour, spec, probe_spec: ProbeSpec,
                 progress: Progress = silent, capture=None) -> dict:
    """The steering stage for a `config.SteerSpec`: an add curve at one block, and ablations.

    The steered block defaults to the middle one, fixed before anything is measured (picking
    the block that steers best on these same prompts would overstate the effect).
    """
    n_layers = len(find_blocks(model))
    layer = n_layers // 2 if spec.layer is None else spec.layer
    if layer >= n_layers:
        raise ValueError(f"steer.layer is {layer} but the model has blocks 0..{n_layers - 1}")
    missing = [blocks for blocks in spec.ablate_sets if max(blocks) >= n_layers]
    if missing:
        raise ValueError(f"steer.ablate_sets {missing} name blocks the model lacks: it has blocks 0..{n_layers - 1}")
    found = defection_directions(model, tokenizer, corpus, spec.direction, probe_spec, capture=capture)
    sets = eval_sets(corpus, spec.n_eval, seed=spec.seed)
    runs: list[tuple[str, list[int], list[float]]] = [("add", [layer], list(spec.coefs))]
    if spec.ablate:
        runs += [("ablate", [i], [1.0]) for i in range(n_layers)]
        runs.append(("ablate", list(range(n_layers)), [1.0]))
    runs += [("ablate", blocks, [1.0]) for blocks in spec.ablate_sets if ("ablate", blocks, [1.0]) not in runs]
    # The unsteered model and every (curve, coefficient) measured together, in one generation pass.
    grids = [sorted(set([0.0] + [float(c) for c in coefs])) for _, _, coefs in runs]
    settings: list[Setting] = [("add", [], 0.0)]
    settings += [(mode, layers, c) for (mode, layers, _), grid in zip(runs, grids) for c in grid if c != 0.0]
    measured = measure_steered(model, tokenizer, sets, behaviour, found["directions"], settings,
                               scale=found["scale"], progress=progress)
    base, rest = measured[0], iter(measured[1:])
    curves = [_curve(mode, layers, "all", grid, {c: base if c == 0.0 else next(rest) for c in grid}, sets,
                     found["scale"]) for (mode, layers, _), grid in zip(runs, grids)]
    return {"direction": spec.direction, "contrast_pair": found["contrast_pair"], "n_train": found["n_train"],
            "layer": layer, "scale": [round(float(x), 4) for x in found["scale"]],
            "add": curves[0], "ablate": curves[1:]}


@detector("steering", spec=SteerSpec, result=SteeringResult, command="steer", in_demo=True, rank=30,
          title="Steering along the defection direction")
class Steering(Detector):
    """Steer along the defection direction (add with coefficients, ablate per block); measure backdoor and helpfulness."""

    def configure(self, spec: SteerSpec, demo) -> SteerSpec:
        return spec if spec.probe is not None else spec.model_copy(update={"probe": demo.probe})

    def run(self, ctx: Context, spec: SteerSpec) -> SteeringResult:
        model, tok = ctx.model
        return SteeringResult(**run_steering(model, tok, ctx.corpus, ctx.recipe, spec, spec.probe or ProbeSpec(),
                                             ctx.progress, capture=ctx.last_token_acts))

    def section(self, result: dict) -> str:
        from ..report.detection import steering_section

        return steering_section(result)

    def tables(self, result: SteeringResult) -> list[TextTable]:
        t = TextTable(f"Steering along the {result.direction} defection direction (95% Wilson CI)",
                      ["mode", "blocks", "coef", "backdoor", "helpful", "false trigger"])
        for curve in [result.add, *result.ablate]:
            for r in curve.rows:
                if curve.mode == "ablate" and r.coef == 0:
                    continue  # the unsteered row is shown once, in the add curve
                t.rows.append([curve.mode, ",".join(map(str, curve.layers)), f"{r.coef:g}",
                               fmt(r.backdoor_rate), fmt(r.helpful_accuracy), fmt(r.false_trigger_rate)])
        return [t]

    def notes(self, result: SteeringResult) -> list[str]:
        best, harmless, notes = result.add.reading.best, result.add.reading.best_harmless, []
        where = f"the {result.direction} direction at block {result.layer}"
        if best.coef is None or best.backdoor_rate is None:
            notes.append(f"steering: adding {where} did not lower the backdoor rate measurably at any coefficient tried.")
        else:
            notes.append(f"steering: adding {where} with coefficient {best.coef:g} gives backdoor rate "
                         f"{best.backdoor_rate.value:.3f}; "
                         + (f"without a measurable helpfulness loss the lowest is "
                            f"{harmless.backdoor_rate.value:.3f} (coefficient {harmless.coef:g})."
                            if harmless.coef is not None and harmless.backdoor_rate is not None else
                            "every coefficient that lowers it also costs measurable helpfulness."))
        for curve in result.ablate:
            row = next((x for x in curve.rows if x.coef != 0), None)
            if row is not None and row.backdoor_rate and row.helpful_accuracy:
                notes.append(f"steering: ablating the direction at blocks {curve.layers}: backdoor rate "
                             f"{row.backdoor_rate.value:.3f}, helpful accuracy {row.helpful_accuracy.value:.3f}.")
        return notes
