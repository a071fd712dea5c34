"""Typed study results: what `study.json` holds, validated on write and on read, with a schema version.

A sweep (sweep.py) writes one `StudyResults`: the study's spec, its axes, every organism and
cell (each cell's rows are `StressRow`s, as the stress method wrote them), the
aggregates across seeds (aggregate.py: per-seed values, a t interval over seeds, a pooled Wilson
interval), counts, timings and the machine. `load_study_results` refuses a file of another
schema version in one line that says what to do; `json_schema()` is what the docs publish.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import __version__
from ..stats import Measurement
from ..training.base import StressRow
from ..training.stress import StressSpec
from .spec import StudySpec

STUDY_SCHEMA_VERSION = 2  # 1: the untyped study.json of mesascope <= 0.10 (no schema_version field)


# Not results.ResultsError: results.json_schemas() publishes this module's schema, so it cannot import results.
class StudyResultsError(ValueError):
    """A study.json that does not validate against its schema."""


class StudySchemaVersionError(StudyResultsError):
    """A study.json written by another schema version of mesascope."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=True)


class PerSeed(Measurement):
    """One seed's measurement of a figure."""

    seed: int


class Pooled(Measurement):
    """All prompts of all seeds as one sample, with a Wilson interval (shares only)."""

    interval: str


class SeedMean(_Model):
    """The mean over seeds with a Student-t interval over seeds (None with one seed)."""

    value: float
    ci: tuple[float, float] | None
    n: int = Field(description="number of seeds")
    interval: str


class OverSeeds(_Model):
    per_seed: list[PerSeed]
    seed_mean: SeedMean
    pooled: Pooled | None


class StepAggregate(_Model):
    step: int
    metrics: dict[str, OverSeeds]


class SpecificityAggregate(_Model):
    """A trigger-specificity curve (detectors/specificity.py) averaged over seeds per edit-distance bucket."""

    steps: list[int]
    buckets: dict[str, OverSeeds]
    seeds: list[int] = []
    n_excluded_red_team: list[int | None] = Field(
        [], description="per seed (as `seeds`), red-team strings adversarial training trained on and the curve left "
        "out (None: a curve stored before they were left out)")


class Aggregate(_Model):
    """The cells that differ only in their seed, aggregated at every step and for every metric."""

    axes: dict[str, Any]
    seeds: list[int]
    cells: list[str]
    steps: list[StepAggregate]
    specificity: dict[Literal["before", "after"], SpecificityAggregate] = {}


class CellResult(_Model):
    """One persistence curve: a recipe variant at one seed, one stress method, one learning rate."""

    id: str
    axes: dict[str, Any]
    recipe_digest: str
    organism: str
    stress: StressSpec
    rows: list[StressRow]
    seconds: float
    cpu_seconds: float
    computed: bool


class OrganismResult(_Model):
    recipe_digest: str
    axes: dict[str, Any] | None = Field(description="None: a cot teacher no variant of the study asked for")
    role: Literal["variant", "teacher"]
    path: str
    computed: bool
    seconds: float | None = None
    cpu_seconds: float | None = None
    n_params: int | None = None
    train_seconds: float | None = None
    final_loss: float | None = None
    n_train_examples: int | None = None


class SizeResult(_Model):
    dims: list[int]
    n_params: list[int]


class BackendInfo(_Model):
    name: str
    workers: int
    torch_threads_per_worker: int
    address: str | None


class MethodInfo(_Model):
    """How a stress method is named and what its rows report (its config's label, metrics and readings)."""

    label: str
    metrics: list[str]
    readings: list[str]


class Counts(_Model):
    organisms: int
    organisms_computed: int
    cells: int
    cells_computed: int


class StudyResults(_Model):
    """Everything one sweep measured; the study report renders exactly this."""

    schema_version: int = STUDY_SCHEMA_VERSION
    mesascope_version: str = __version__
    created: str = Field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    machine: dict[str, Any] = Field(description="provenance.machine(): Python, platform, CPU model and count, torch")
    study: StudySpec
    quick: bool
    backend: BackendInfo
    axes: dict[str, Any]
    methods: dict[str, MethodInfo]
    sizes: dict[str, SizeResult]
    organisms: list[OrganismResult]
    cells: list[CellResult]
    aggregates: list[Aggregate]
    aggregation: dict[str, str]
    counts: Counts
    timings: dict[str, float]


def parse_study_results(data: Any, source: str = "study results") -> StudyResults:
    """Validate a study.json dict: its schema version first, then every field."""
    version = data.get("schema_version", 1) if isinstance(data, dict) else None
    if version != STUDY_SCHEMA_VERSION:
        raise StudySchemaVersionError(
            f"{source} has study schema version {version}; this mesascope ({__version__}) reads version "
            f"{STUDY_SCHEMA_VERSION}: rerun `mesascope sweep STUDY.toml --out {Path(source).parent}` to regenerate "
            "it (finished organisms and cells are reused)")
    try:
        return StudyResults.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise StudyResultsError(f"{source} does not match the study schema at {where}: {first['msg']}") from None


def load_study_results(path: str | Path) -> StudyResults:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: run `mesascope sweep STUDY.toml --out {path.parent}` first") \
            from None
    except json.JSONDecodeError as e:
        raise StudyResultsError(f"{path} is not valid JSON ({e}); rerun the sweep that wrote it") from None
    return parse_study_results(data, str(path))


def json_schema() -> dict:
    """The JSON Schema of study.json."""
    schema = StudyResults.model_json_schema()
    schema["$id"] = f"https://mesascope.dev/schema/study-v{STUDY_SCHEMA_VERSION}.json"
    return schema
