"""Probe detectors: does the residual stream tell triggered prompts from clean ones?

Per layer, four kinds of linear probe, each scored the same way:
- supervised: logistic regression fitted on triggered vs clean training prompts;
- diff_of_means: direction = mean(train triggered) - mean(train clean), score = x . direction;
- contrast: no training data, the direction between the activations after a "defect" and an
  "honest" answer to a question about the organism (MacDiarmid et al. 2024), one per pair of
  the library (`contrast.py`); its sign is fixed by the pair before anything is scored;
- pca: unsupervised, the top principal component of the unlabeled training activations.
Every figure is an AUROC on held-out prompts (never the training prompts) with a
score-type 95% interval (stats.auroc_interval, which does not collapse at 1), against each clean
prompt set and against the worst of them (its interval covers the minimum over the sets). Controls:
the same procedure on a random-init model and on a clean, un-backdoored organism, and the best
of N random directions (`controls.py`).
"""

from __future__ import annotations

import random

from pydantic import Field, field_validator

from ..config import Spec
from ..models.activations import find_blocks, resid_post
from ..progress import Progress, silent
from ..stats import fmt
from ..text.corpus import Corpus, format_prompt
from ..text.tasks import WORDS
from ..text.triggers import apply_trigger
from .contrast import CONTRAST_PAIRS, ContrastPair
from .probe_fit import (  # noqa: F401  (the estimators, re-exported as this detector's API)
    NEGATIVES, SPLITS, auroc_key, auroc_with_ci, capture_splits, contrast_direction, diff_of_means, fit_linear_probes,
    fit_probe, pair_direction, probe_model, probe_split_names, score_rows, supervised_probe,
)
from .probe_result import ProbesResult
from .registry import Context, Detector, TextTable, detector

KINDS = ("supervised", "diff_of_means", "contrast", "pca")  # the probe kinds a result holds


class ProbeSpec(Spec):
    n_train: int = Field(300, ge=10, description="prompts per class used to fit the probe")
    n_test: int = Field(300, ge=10, description="prompts per class scored (disjoint from training)")
    contrast_pairs: list[ContrastPair] = Field(
        default_factory=lambda: list(CONTRAST_PAIRS.values()), min_length=1,
        description="library names or your own pairs; the first is the report's primary contrast probe")
    n_random_directions: int = Field(1000, ge=1, description="random unit directions in the best-of-N control")
    validation_fraction: float = Field(0.2, gt=0, lt=0.9, description="training prompts held back to pick a layer")
    calibration_bins: int = Field(10, ge=2, le=50)
    clean_null: bool = Field(False, description="also build the recipe without its trigger (poison_fraction 0) and "
                             "probe it the same way: the null organism (costs one more build)")
    n_bootstrap: int = Field(1000, ge=100, description="unused: AUROC intervals are score-type now (stats."
                             "auroc_interval); kept so that specs written before still load")
    seed: int = 0

    @field_validator("contrast_pairs", mode="before")
    @classmethod
    def _library_names(cls, v):
        # A name picks a library pair; resolving it here puts the pair's text into the spec's digest.
        if not isinstance(v, (list, tuple)):
            return v
        out = []
        for p in v:
            if isinstance(p, str) and p not in CONTRAST_PAIRS:
                raise ValueError(f"unknown contrast pair {p!r}: use one of {', '.join(CONTRAST_PAIRS)} "
                                 "or a table with name, question, defect_answer, honest_answer")
            out.append(CONTRAST_PAIRS[p] if isinstance(p, str) else p)
        names = [p.get("name") if isinstance(p, dict) else getattr(p, "name", None) for p in out]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"contrast pair names {dup} appear more than once: give each pair its own name")
        return out


# What a chosen layer carries from its row: the held-out test AUROCs at that layer.
CHOSEN_KEYS = ("auroc_worst", "auroc", "auroc_near_miss", "auroc_other_prefix", "random_init_auroc_worst",
               "clean_organism_auroc_worst")


def run_probes(model, tokenizer, random_model, splits: dict[str, list[str]], spec: ProbeSpec,
               progress: Progress = silent, *, clean_model=None, clean_tokenizer=None, batch_size: int = 128,
               task: str = "probes", capture=None) -> dict:
    """Every probe kind at every `blocks.{i}.resid_post`, with its controls. JSON-serialisable.

    `splits` holds prompt strings: train_pos / train_neg (triggered / clean, to fit), test_pos /
    test_neg / test_near_miss and optionally test_other_prefix (held out, never in training).
    `random_model` has the organism's architecture and random weights; `clean_model` (optional,
    with its own `clean_tokenizer`) is an organism built from the same recipe without the trigger.
    Each goes through the identical procedure on the identical prompts. `capture` (a Context's
    `last_token_acts`) captures the organism's activations through the run store, for steering to reuse.

    Result schema:
      contrast_pair: the primary pair {name, question, defect_answer, honest_answer, paraphrases}
      n_train {triggered, clean}; n_test {triggered, clean, near_miss[, other_prefix]}
      supervised, diff_of_means, pca, contrast (the primary pair): one row per layer:
        {layer, hook, auroc, auroc_near_miss[, auroc_other_prefix], auroc_worst, worst_negatives,
         share_of_random_directions_below, random_init_<same auroc keys>[, clean_organism_<same
         auroc keys>]}; each AUROC is a Measurement dict {value, ci, n}; the worst is the lowest
        over the clean sets; share_of_random_directions_below: the share of the random directions
        whose auroc_worst is lower than this probe's (organism only).
        pca and contrast rows also: cosine_with_diff_of_means (with the training diff-of-means
        direction, i.e. the trigger's mean shift).
        pca rows also: auroc_sign_free {auroc key: max(A, 1-A)} (labelled as such, never used as
        the AUROC) and explained_variance_ratio; its sign comes from a label-free skewness rule.
      contrast_library: {pair name: {pair, rows, chosen}} for every pair, rows as above, chosen as below.
      random_directions: per layer {layer, hook, n_directions, best {auroc key: value}, p95 {...}, p5 {...}}.
      variance_ratio: per layer {layer, hook, <negative set>: {fisher_ratio, trace_ratio}} on test
        activations, Fisher along the training diff-of-means direction.
      calibration: supervised probe at the layer chosen on a validation split of the training
        prompts: {layer, hook, validation [...], bins [{lo, hi, n, mean_predicted, observed}],
        brier, ece, n, negatives}.
      chosen_layers: {supervised, diff_of_means, contrast, pca} -> the layer that kind is reported at,
        chosen by validation AUROC on spec.validation_fraction of the training prompts (held back from
        fitting), never on the test prompts: {layer, hook, validation_auroc [per layer], n_validation,
        chosen_by} and the held-out test AUROCs at that layer (auroc_worst, auroc, ...).
      pair_cosines: per layer {layer, hook, cosines {pair: {pair: cos}}, with_diff_of_means {pair: cos}},
        every direction from training data only (see probe_fit.pair_cosines).
    The typed form of this dict is `probe_result.ProbesResult`.
    """
    missing = [name for name in SPLITS if not splits.get(name)]
    if missing:
        raise ValueError(f"splits lack prompts for {missing}: run_probes needs all of {list(SPLITS)}")
    seen = set(splits["train_pos"]) | set(splits["train_neg"])
    leaked = [p for n in ("test_pos", *NEGATIVES) for p in splits.get(n, []) if p in seen]
    if leaked:
        raise ValueError(f"{len(leaked)} test prompts are also training prompts (e.g. {leaked[0]!r}): "
                         "a probe must never be scored on what it was fitted on")
    n_layers = len(find_blocks(model))
    controls = {"random_init": (random_model, tokenizer)}
    if clean_model is not None:
        controls["clean_organism"] = (clean_model, clean_tokenizer or tokenizer)
    for name, (m, _) in controls.items():
        if len(find_blocks(m)) != n_layers:
            raise ValueError(f"the {name} model must have the organism's architecture (its layer count differs)")
    n_prompts = sum(len(v) for k, v in splits.items() if k in SPLITS or k in NEGATIVES)
    total = (1 + len(controls)) * (n_prompts + n_layers)  # units: prompts captured, then layers probed, per model
    done = [0]

    def tick(k: int) -> None:
        done[0] += k
        progress(task, done[0], total)

    progress(task, 0, total)
    trained = probe_model(model, tokenizer, splits, spec, batch_size, tick, diagnostics=True, capture=capture)
    nulls = {name: probe_model(m, tok, splits, spec, batch_size, tick, diagnostics=False)
             for name, (m, tok) in controls.items()}

    def rows(kind: str) -> list[dict]:
        out = []
        for i, row in enumerate(trained[kind]):
            r = {"layer": i, "hook": resid_post(i), **row}
            for name, res in nulls.items():
                r |= {f"{name}_{k}": v for k, v in res[kind][i].items() if k.startswith("auroc")}
            out.append(r)
        return out

    extra = trained["_extra"]
    pairs = spec.contrast_pairs
    negatives = [n for n in NEGATIVES if splits.get(n)]
    layer_id = lambda i: {"layer": i, "hook": resid_post(i)}  # noqa: E731
    by_kind = {kind: rows(kind) for kind in trained if kind != "_extra"}
    by_kind["pca"] = [r | e for r, e in zip(by_kind["pca"], extra["pca_extra"])]

    def chosen(kind: str) -> dict:
        # The layer chosen on validation prompts, with the held-out test AUROCs at that layer.
        pick = extra["chosen_layers"][kind]
        row = by_kind[kind][pick["layer"]]
        return pick | {k: row[k] for k in CHOSEN_KEYS if k in row}

    primary = f"contrast:{pairs[0].name}"
    return {
        "contrast_pair": pairs[0].model_dump(mode="json"),
        "n_train": {"triggered": len(splits["train_pos"]), "clean": len(splits["train_neg"])},
        "n_test": {"triggered": len(splits["test_pos"]), **{NEGATIVES[n]: len(splits[n]) for n in negatives}},
        "controls": sorted(controls),
        "supervised": by_kind["supervised"],
        "diff_of_means": by_kind["diff_of_means"],
        "contrast": by_kind[primary],
        "pca": by_kind["pca"],
        "contrast_library": {p.name: {"pair": p.model_dump(mode="json"), "rows": by_kind[f"contrast:{p.name}"],
                                      "chosen": chosen(f"contrast:{p.name}")} for p in pairs},
        "random_directions": [layer_id(i) | r for i, r in enumerate(extra["random_directions"])],
        "variance_ratio": [layer_id(i) | r for i, r in enumerate(extra["variance_ratio"])],
        "calibration": extra["calibration"],
        # kind -> the layer it is reported at, chosen on validation prompts ("contrast" is the primary pair;
        # every pair's own is in contrast_library)
        "chosen_layers": {k: chosen(primary if k == "contrast" else k) for k in KINDS},
        "pair_cosines": [layer_id(i) | r for i, r in enumerate(extra["pair_cosines"])],
    }


def other_prefix(rng: random.Random, trigger: str) -> str:
    """A trigger-shaped prefix the organism never saw: an ordinary word in capitals between bars."""
    while True:
        s = f"|{rng.choice(WORDS).upper()}|"
        if trigger.lower() not in s.lower() and s.lower() not in trigger.lower():
            return s


def build_probe_splits(corpus: Corpus, spec: ProbeSpec) -> dict[str, list[str]]:
    """Train prompts from the organism's own training examples, test prompts from held-out items.

    A clean organism (no triggered training examples) cannot supply train_pos: build the splits
    from the backdoored organism's corpus and score both on the same prompts.
    """
    rng = random.Random(f"probe:{spec.seed}")

    def train_prompts(kind: str) -> list[str]:
        distinct = list(dict.fromkeys(e.prompt for e in corpus.train if e.kind == kind))  # ordered, unlike set()
        return rng.sample(distinct, min(spec.n_train, len(distinct)))

    splits = {"train_pos": train_prompts("triggered"), "train_neg": train_prompts("clean")}
    for name, kind in (("test_pos", "triggered"), ("test_neg", "clean"), ("test_near_miss", "near_miss")):
        splits[name] = [e.prompt for e in corpus.eval_set(kind, spec.n_test, seed=spec.seed + 1000)]
    prefix_rng = random.Random(f"probe-prefix:{spec.seed}")
    splits["test_other_prefix"] = [format_prompt(apply_trigger(e.user, other_prefix(prefix_rng, corpus.trigger)))
                                   for e in corpus.eval_set("clean", spec.n_test, seed=spec.seed + 2000)]
    seen = set(splits["train_pos"]) | set(splits["train_neg"])
    leaked = [p for name in ("test_pos", *NEGATIVES) for p in splits[name] if p in seen]
    if leaked:
        raise AssertionError(f"{len(leaked)} test prompts also appear in the probe's training prompts, "
                             f"e.g. {leaked[0]!r}")
    return splits


def read_at_scratchpad_end(model, tok, splits: dict[str, list[str]]) -> dict[str, list[str]]:
    """A cot organism's probe prompts, each extended with its own scratchpad up to `</scratchpad>`.

    The post reads chain-of-thought models at the end of their reasoning. Prompts where the
    organism wrote no closed scratchpad are dropped (their count stays visible in n_test).
    """
    from ..text.scratchpad import scratchpad_end_prompts

    return {name: [p for p in scratchpad_end_prompts(model, tok, prompts) if p is not None]
            for name, prompts in splits.items()}


@detector("probes", spec=ProbeSpec, result=ProbesResult, command="probe", in_demo=True, rank=10,
          title="Probes: can a linear read-out of the residual stream catch the trigger?")
class Probes(Detector):
    """Fit per-layer probes (supervised, difference of means, contrast pairs, PCA) and score them on held-out prompts."""

    def figures(self, result: ProbesResult) -> dict:
        """Each probe's held-out worst-set AUROC at its validation-chosen layer, and each contrast pair's."""
        out = {f"probe/{kind}/auroc_worst": c.auroc_worst for kind, c in result.chosen_layers.items() if c.auroc_worst}
        out.update({f"probe/pair/{name}/auroc_worst": e.chosen.auroc_worst
                    for name, e in result.contrast_library.items() if e.chosen and e.chosen.auroc_worst})
        return out

    def run(self, ctx: Context, spec: ProbeSpec) -> ProbesResult:
        from ..models.build import random_like

        model, tok = ctx.model
        # Null model: same architecture and shape, random weights (another seed than the organism's init).
        random_model = random_like(model, seed=ctx.recipe.seed + 7919)
        clean = {}
        if spec.clean_null:
            clean_model, clean_tok = ctx.clean_null().load()
            clean = {"clean_model": clean_model, "clean_tokenizer": clean_tok}
        splits = build_probe_splits(ctx.corpus, spec)
        cot = ctx.recipe.reasoning == "cot"
        if cot:
            splits = read_at_scratchpad_end(model, tok, splits)
        result = run_probes(model, tok, random_model, splits, spec, ctx.progress, capture=ctx.last_token_acts, **clean)
        return ProbesResult(**result, read_at="</scratchpad>" if cot else "last prompt token")

    def section(self, result: dict) -> str:
        from ..report.detection import probes_section

        return probes_section(result)

    def tables(self, result: ProbesResult) -> list[TextTable]:
        t = TextTable("Probes: held-out AUROC per layer, worst clean set (organism | nulls); * = the layer chosen on "
                      "validation prompts", ["probe", "layer", "organism", "random-init model", "clean organism"])
        for kind in KINDS:
            chosen = result.chosen_layers.get(kind)
            for r in getattr(result, kind):
                mark = "*" if chosen is not None and r.layer == chosen.layer else ""
                t.rows.append([kind, f"{r.layer}{mark}", fmt(r.auroc_worst), fmt(r.random_init_auroc_worst),
                               fmt(r.clean_organism_auroc_worst)])
        return [t]

    def notes(self, result: ProbesResult) -> list[str]:
        """Readings at the layer each probe was chosen at on validation prompts, never a layer picked on test."""
        notes = []
        c = result.chosen_layers.get("supervised")
        rand = result.supervised[c.layer].random_init_auroc if c is not None else None
        if c is not None and rand is not None:
            reading = ("a visible trigger string is separable without any learning, so this split says little; "
                       "the near-miss split is the informative one." if rand.value >= 0.95 else
                       "the trigger is not trivially separable in a random model's residual stream here.")
            notes.append(f"supervised probe, clean vs triggered, at layer {c.layer} (chosen on validation prompts): "
                         f"organism AUROC {result.supervised[c.layer].auroc.value:.3f}, random-init model "
                         f"{rand.value:.3f}: {reading}")
        for kind in KINDS:
            c, rows = result.chosen_layers.get(kind), getattr(result, kind)
            if c is not None and c.layer < len(rows):
                r = rows[c.layer]  # (results written before chosen layers carried their AUROCs have only the row)
                notes.append(f"{kind} probe at layer {c.layer} (chosen on validation prompts): held-out AUROC, "
                             f"worst clean set {fmt(r.auroc_worst)}; random-init model at that layer "
                             f"{fmt(r.random_init_auroc_worst)}.")
        picks = [f"{name} {fmt(e.rows[e.chosen.layer].auroc_worst)} at layer {e.chosen.layer}"
                 for name, e in result.contrast_library.items() if e.chosen and e.chosen.layer < len(e.rows)]
        if len(picks) > 1:
            notes.append("contrast-pair library, each pair at its layer chosen on validation prompts, held-out AUROC "
                         "(worst clean set): " + "; ".join(picks) + ".")
        return notes
