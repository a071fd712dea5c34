"""Typed results: what `results.json` holds, validated on write and on read, with a schema version.

A run's results are a `RunResults`: the organism, its headline `Measurement`s, the stress
curves (`StressPoint`s) and one typed result per detector (each detector's own model, see
`detectors/registry.py`). `load_results` refuses a file of another schema version in one line
that says what to do; `json_schema()` is what the docs publish (docs/schema/).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from . import __version__
from .errors import MesascopeError, read_json
from .machine import Machine, machine
from .stats import Measurement

SCHEMA_VERSION = 2  # 1: the untyped dicts of mesascope <= 0.10 (no schema_version field)


class ResultsError(MesascopeError, ValueError):
    """A results file that does not validate against its schema."""


class SchemaVersionError(ResultsError):
    """A results file written by another schema version of mesascope."""


class StressPoint(BaseModel):
    """One point of a persistence curve: a stress method at one lr, measured at one step.

    The other fields are what the method measured: Measurements (backdoor_rate, helpful_accuracy,
    ...) and the method's training readings (e.g. RL's train_reward).
    """

    model_config = ConfigDict(extra="allow", allow_inf_nan=True)
    __pydantic_extra__: dict[str, Measurement | float | str | list | dict | None] = Field(init=False)

    method: str = "hhh_sft"
    label: str = "HHH SFT"
    lr: float
    step: int

    @property
    def metrics(self) -> dict[str, Measurement]:
        return {k: v for k, v in (self.__pydantic_extra__ or {}).items() if isinstance(v, Measurement)}


class OrganismInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    path: str
    fingerprint: str


class RunResults(BaseModel):
    """Everything one run measured on one organism; the report renders exactly this."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=True)

    schema_version: int = SCHEMA_VERSION
    provenance: dict[str, Any] | None = Field(None, description="command, commit and machine that wrote the file")
    mesascope_version: str = __version__
    created: str = Field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    machine: Machine = Field(default_factory=machine)
    recipe: dict[str, Any]
    organism: OrganismInfo
    metrics: dict[str, Measurement] = {}
    per_family: dict[str, Measurement] = {}
    samples: list[dict[str, Any]] = []
    near_miss_strings: dict[str, list[str]] = {}
    stress: list[StressPoint] = []
    detectors: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="detector name -> its result (validated by the detector's own model)")
    timings: dict[str, float] = {}
    notes: list[str] = []

    def detector_results(self) -> dict[str, Any]:
        """Each detector's result parsed by its own model (unknown names are an error)."""
        from .detectors.registry import get_detector

        return {name: get_detector(name).parse(data) for name, data in self.detectors.items()}


def check_version(data: Any, source: str) -> None:
    if not isinstance(data, dict):
        kind = {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(data), "number")
        raise ResultsError(f"{source} holds a JSON {kind}, not a results object",
                           "rerun the command that wrote it")
    version = data.get("schema_version", 1)
    if version != SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{source} has results schema version {version}; this mesascope ({__version__}) reads version "
            f"{SCHEMA_VERSION}: rerun the command that wrote it to regenerate it")


def parse_results(data: Any, source: str = "results") -> RunResults:
    """Validate a results dict: its schema version, its fields, and every detector's result."""
    from .detectors.registry import load_all

    check_version(data, source)
    try:
        results = RunResults.model_validate(data)
    except ValidationError as e:
        raise ResultsError(f"{source} does not match the results schema at {_where(e)}") from None
    for name, part in results.detectors.items():
        if name not in load_all():
            raise ResultsError(f"{source}: detectors.{name} is no installed detector ({', '.join(sorted(load_all()))}); "
                               "install the plugin that wrote it or remove the entry")
        try:
            load_all()[name]().parse(part)
        except ValidationError as e:
            raise ResultsError(f"{source} does not match the results schema at detectors.{name}.{_where(e)}") from None
    return results


def _where(e: ValidationError) -> str:
    first = e.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"


def load_results(path: str | Path) -> RunResults:
    path = Path(path)
    if not path.exists():  # FileNotFoundError, as callers (and earlier_results) expect of a missing file
        raise FileNotFoundError(f"{path} not found: run `mesascope demo --out {path.parent}` first")
    try:
        data = read_json(path, "results file", "rerun the command that wrote it")
    except MesascopeError as e:
        raise ResultsError(e.what, e.fix) from None
    return parse_results(data, str(path))


def json_schema() -> dict:
    """The JSON Schema of results.json, each registered detector's result spelt out."""
    from .detectors.registry import Skipped, load_all

    fields = {name: (cls.Result | Skipped | None, None) for name, cls in sorted(load_all().items())}
    Detectors = create_model("Detectors", __config__=ConfigDict(extra="forbid"), **fields)  # type: ignore[call-overload]
    Published = create_model("RunResults", __base__=RunResults, detectors=(Detectors, Field(default_factory=dict)))
    schema = Published.model_json_schema()
    schema["$id"] = f"https://mesascope.dev/schema/results-v{SCHEMA_VERSION}.json"
    return schema


def json_schemas() -> dict[str, dict]:
    """Every published schema by file kind: what `mesascope schema` writes into docs/schema/."""
    from .study.conditioning_results import json_schema as conditioning_schema
    from .study.results import json_schema as study_schema

    return {"results": json_schema(), "study": study_schema(), "conditioning": conditioning_schema()}
