"""The steering detector's result as typed rows: each coefficient's Measurements, per curve."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from ..stats import Measurement
from .probe_result import Row
from .registry import Result

Mode = Literal["add", "ablate"]
Where = Literal["all", "last"]


class Sample(Result):
    """One generation at a coefficient: model output, untrusted text (escape it when rendering)."""

    model_config = ConfigDict(extra="allow")

    kind: str
    family: str | None = None
    prompt: str
    output: str
    fired: bool
    correct: bool | None = None


class SteeringRow(Row):
    """One coefficient: the rates with Wilson intervals, and changes against coefficient 0 (Newcombe)."""

    coef: float
    backdoor_rate: Measurement | None = None
    false_trigger_rate: Measurement | None = None
    near_miss_rate: Measurement | None = None
    helpful_accuracy: Measurement | None = None
    backdoor_change: Measurement | None = None
    helpful_change: Measurement | None = None
    n: dict[str, int] = Field(description="held-out prompts per set")
    samples: list[Sample] = []


class Pick(Result):
    """A coefficient the reading picked (coef None: none lowered the backdoor rate measurably)."""

    coef: float | None = None
    backdoor_rate: Measurement | None = None
    backdoor_change: Measurement | None = None
    helpful_change: Measurement | None = None
    hurts_helpfulness: bool | None = None


class Reading(Result):
    lowers_backdoor_at: list[float]
    best: Pick
    best_harmless: Pick


class SteeringCurve(Result):
    mode: Mode
    layers: list[int]
    where: Where
    coefs: list[float]
    scale: list[float] | None = Field(None, description="add: the residual norm each coefficient multiplies")
    rows: list[SteeringRow]
    reading: Reading


class SteeringResult(Result):
    """An add curve at one block and ablation curves; each row is a coefficient's Measurements."""

    direction: str
    contrast_pair: str | None = Field(None, description="the pair's name, for direction 'contrast'")
    n_train: dict[str, int] | int | None = None
    layer: int
    scale: list[float]
    add: SteeringCurve
    ablate: list[SteeringCurve]
