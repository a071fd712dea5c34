"""The Detector registry: every instrument that measures an organism is one module in this package.

A detector is a class registered by decorator, with its spec (what to measure, plain data that
the run store hashes) and its result (a pydantic model, validated on every read) beside it:

    @detector("logit_lens", spec=LogitLensSpec, result=LogitLensResult, command="logit-lens")
    class LogitLens(Detector):
        def run(self, ctx, spec): ...        # -> LogitLensResult
        def section(self, result): ...       # -> HTML for report.html
        def tables(self, result): ...        # -> TextTables for the terminal
        def notes(self, result): ...         # -> plain-language readings of this run's numbers

The pipeline (`Run.detect`), the CLI (one command per detector) and the report loop over this
registry, so adding a detector is adding one module here and its test. Modules are found by
listing the package, so nothing needs to import a detector just to register it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ..config import Spec
from ..progress import Progress, silent

if TYPE_CHECKING:
    import numpy as np

    from ..organisms.organism import Organism
    from ..store import RunStore
    from ..text.corpus import Corpus


class Result(BaseModel):
    """Base of every detector's result: plain data, validated when read back from results.json."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=True)


class Skipped(Result):
    """A detector that does not apply to this organism, and why (shown in the report as such)."""

    skipped: str


@dataclass
class TextTable:
    """A table for the terminal: the CLI renders it with rich, escaping every cell."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)


@dataclass
class Context:
    """What a detector may use: the organism, its recipe and corpus, a null organism, progress.

    The corpus and models load lazily, so a detector that needs neither costs nothing.
    """

    organism: "Organism"
    progress: Progress = silent
    corpus_fn: Callable[[], "Corpus"] | None = None
    clean_null_fn: Callable[[], "Organism"] | None = None
    store: "RunStore | None" = None  # where activations one detector captured wait for the next

    @property
    def recipe(self):
        return self.organism.recipe

    @cached_property
    def corpus(self) -> "Corpus":
        if self.corpus_fn is not None:
            return self.corpus_fn()
        from ..text.corpus import build_corpus

        return build_corpus(self.recipe)

    @cached_property
    def model(self):
        """(model, tokenizer) of the organism, loaded once."""
        return self.organism.load()

    def last_token_acts(self, prompts: list[str], *, batch_size: int = 128,
                        on_batch: Callable[[int], None] | None = None) -> "np.ndarray":
        """The organism's residual stream after each block at each prompt's last token, [n_layers, n, d]
        (`capture_last_token`), kept in the run store per (organism, prompts): detectors that read the same
        prompts (the probe splits: probes, then steering) capture them once, whichever runs first."""
        import numpy as np

        from ..models.activations import ActivationStore, capture, capture_last_token, n_blocks, resid_post
        from ..store import computing, digest

        model, tok = self.model
        if self.store is None:
            return capture_last_token(model, tok, prompts, batch_size=batch_size, on_batch=on_batch)
        hooks = [resid_post(i) for i in range(n_blocks(model))]
        stage = self.store.stage_dir("activations", digest(self.organism.fingerprint, prompts, batch_size))
        with computing(stage / "done.json"):  # a detector in another worker (workers.py) waits, then reads
            if self.store.is_done(stage):
                if on_batch:
                    on_batch(len(prompts))
            else:  # one shard: the batches (so every float) are those of capture_last_token in memory
                capture(model, tok, prompts, hooks, "last", batch_size=batch_size, out_dir=stage,
                        shard_size=len(prompts), on_batch=on_batch)
                self.store.mark_done(stage)
        acts = ActivationStore(stage)
        return np.stack([acts[h] for h in hooks])

    def clean_null(self) -> "Organism":
        """The same recipe trained without its trigger: the null organism (built on first use)."""
        if self.clean_null_fn is None:
            raise ValueError("this run has no way to build the clean null organism")
        return self.clean_null_fn()


class Detector:
    """One instrument. Subclasses set the class attributes through `@detector` and override `run`."""

    name: ClassVar[str]
    command: ClassVar[str | None]
    title: ClassVar[str]
    Spec: ClassVar[type[Spec]]
    Result: ClassVar[type[Result]]
    in_demo: ClassVar[bool]
    rank: ClassVar[int]
    flags: ClassVar[tuple[str, ...]]

    def skip_reason(self, recipe) -> str | None:
        """Why this detector does not apply to organisms of `recipe`, or None when it does."""
        return None

    def run(self, ctx: Context, spec: Any) -> Result:
        raise NotImplementedError

    def configure(self, spec: Any, demo: Any) -> Any:
        """This detector's spec within a demo spec `demo` (e.g. to share another detector's settings)."""
        return spec

    def section(self, result: Any) -> str:
        """HTML for report.html; every string from `result` must go through `report.safe.esc`."""
        return ""

    def tables(self, result: Any) -> list[TextTable]:
        return []

    def notes(self, result: Any) -> list[str]:
        return []

    def figures(self, result: Any) -> dict[str, Any]:
        """The headline Measurements a replicate averages over seeds (`mesascope replicate --config`), by name
        (parts joined by "/", never ".": the docs address a figure by a dotted path)."""
        return {}

    def parse(self, data: dict) -> Result:
        """A stored result read back: validated against this detector's schema."""
        return Skipped.model_validate(data) if "skipped" in data else self.Result.model_validate(data)


DETECTORS: dict[str, type[Detector]] = {}


def detector(name: str, *, spec: type[Spec], result: type[Result], title: str | None = None,
             command: str | None = None, in_demo: bool = False, rank: int = 50, flags: tuple[str, ...] = ()):
    """Register a Detector class under `name` (its key in results.json and its stage name).

    `command` is its CLI verb and the table name of its spec in a demo TOML (default: `name`);
    `in_demo`: `mesascope demo` runs it; `rank` orders detectors in the demo and the report; `flags`: spec fields
    its command also takes as options (`mesascope redteam ORG --attacker gcg`), the rest coming from --config.
    """

    def deco(cls: type[Detector]) -> type[Detector]:
        if name in DETECTORS and DETECTORS[name].__module__ != cls.__module__:
            raise ValueError(f"two detectors are named {name!r} ({DETECTORS[name].__module__}, {cls.__module__})")
        cls.name, cls.Spec, cls.Result = name, spec, result
        cls.command = command or name
        cls.title = title or name.replace("_", " ").capitalize()
        cls.in_demo, cls.rank, cls.flags = in_demo, rank, flags
        DETECTORS[name] = cls
        return cls

    return deco


_LOADED = False


def load_all() -> dict[str, type[Detector]]:
    """Import every module of this package once, so each registers its detectors."""
    global _LOADED
    if not _LOADED:
        from .. import detectors as package

        for mod in pkgutil.iter_modules(package.__path__):
            if not mod.ispkg and not mod.name.startswith("_") and mod.name != "registry":
                importlib.import_module(f"{package.__name__}.{mod.name}")
        _LOADED = True
    return DETECTORS


def get_detector(name: str) -> Detector:
    found = load_all()
    if name not in found:
        raise KeyError(f"unknown detector {name!r}: choose one of {', '.join(sorted(found))}")
    return found[name]()


def all_detectors() -> list[Detector]:
    """Every registered detector, in report order."""
    return [cls() for cls in sorted(load_all().values(), key=lambda c: (c.rank, c.name))]
