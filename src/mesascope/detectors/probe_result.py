"""The probes detector's result as typed rows, so the published JSON Schema spells every field out.

A row holds only what was measured: an optional field left unset (no clean organism built, no
other-prefix set scored) is absent from results.json, not written as null, which keeps the stored
shape the report and the docs read (`row.get("clean_organism_auroc_worst")`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_serializer

from ..stats import Measurement
from .contrast import ContrastPair
from .registry import Result


class Row(BaseModel):
    """A row of a result table; fields left unset are dropped when written."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=True)

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class AurocValues(Row):
    """Plain AUROCs (no interval) per clean set and for the worst of them."""

    auroc: float | None = None
    auroc_near_miss: float | None = None
    auroc_other_prefix: float | None = None
    auroc_worst: float | None = None


class ProbeRow(Row):
    """One probe kind at one hook point: held-out AUROCs against each clean set, and the nulls' at the same layer."""

    layer: int
    hook: str
    auroc: Measurement = Field(description="triggered vs clean held-out prompts")
    auroc_near_miss: Measurement | None = Field(None, description="triggered vs near-miss strings never trained on")
    auroc_other_prefix: Measurement | None = Field(None, description="triggered vs other bracketed prefixes")
    auroc_worst: Measurement = Field(description="the lowest over the clean sets; its interval covers the minimum")
    worst_negatives: str = Field(description="which clean set was the worst")
    share_of_random_directions_below: float | None = None
    cosine_with_diff_of_means: float | None = Field(None, description="label-free directions (pca, contrast): "
                                                    "cosine with the training difference-of-means direction")
    auroc_sign_free: AurocValues | None = Field(None, description="pca only: max(A, 1 - A), labelled as such")
    explained_variance_ratio: float | None = None
    random_init_auroc: Measurement | None = None
    random_init_auroc_near_miss: Measurement | None = None
    random_init_auroc_other_prefix: Measurement | None = None
    random_init_auroc_worst: Measurement | None = None
    clean_organism_auroc: Measurement | None = None
    clean_organism_auroc_near_miss: Measurement | None = None
    clean_organism_auroc_other_prefix: Measurement | None = None
    clean_organism_auroc_worst: Measurement | None = None


class ChosenLayer(Row):
    """The layer a probe is reported at, chosen on validation prompts, and its held-out test AUROC there."""

    layer: int
    hook: str
    validation_auroc: list[float] = Field(description="per layer, on training prompts held back from fitting")
    n_validation: int
    chosen_by: str
    auroc_worst: Measurement | None = Field(None, description="held-out test AUROC at this layer, worst clean set")
    auroc: Measurement | None = None
    auroc_near_miss: Measurement | None = None
    auroc_other_prefix: Measurement | None = None
    random_init_auroc_worst: Measurement | None = None
    clean_organism_auroc_worst: Measurement | None = None


class LibraryEntry(Row):
    pair: ContrastPair
    rows: list[ProbeRow]
    chosen: ChosenLayer | None = Field(None, description="this pair's layer, chosen on validation prompts")


class RandomDirections(Row):
    layer: int
    hook: str
    n_directions: int
    best: AurocValues
    p95: AurocValues
    p5: AurocValues


class VarianceRatio(Row):
    fisher_ratio: float
    trace_ratio: float


class VarianceRow(Row):
    """Between/within-class variance of triggered against each clean set, on test activations."""

    layer: int
    hook: str
    clean: VarianceRatio | None = None
    near_miss: VarianceRatio | None = None
    other_prefix: VarianceRatio | None = None


class PairCosines(Row):
    """At one layer: cosines between the contrast-pair directions (each defect minus honest), and of each
    with the difference-of-means direction of the training prompts. No test prompt is read."""

    layer: int
    hook: str
    cosines: dict[str, dict[str, float]] = Field(description="pair -> pair -> cosine (a symmetric matrix)")
    with_diff_of_means: dict[str, float]


class ValidationRow(Row):
    layer: int
    auroc: float
    log_loss: float
    n: int


class CalibrationBin(Row):
    lo: float
    hi: float
    n: int
    mean_predicted: float | None = None
    observed: Measurement | None = None


class Calibration(Row):
    """Reliability of the supervised probe's probabilities at the layer chosen on validation prompts."""

    layer: int
    hook: str
    probe: str = "supervised"
    chosen_by: str
    validation: list[ValidationRow]
    negatives: list[str]
    bins: list[CalibrationBin]
    brier: float
    ece: float
    n: int


class ProbesResult(Result):
    """See `probes.run_probes` for how each field is measured."""

    contrast_pair: ContrastPair
    n_train: dict[str, int]
    n_test: dict[str, int]
    controls: list[str]
    supervised: list[ProbeRow]
    diff_of_means: list[ProbeRow]
    contrast: list[ProbeRow]
    pca: list[ProbeRow]
    contrast_library: dict[str, LibraryEntry]
    random_directions: list[RandomDirections]
    variance_ratio: list[VarianceRow]
    calibration: Calibration
    chosen_layers: dict[str, ChosenLayer] = Field(
        default_factory=dict, description="supervised, diff_of_means, contrast (the primary pair), pca -> its layer")
    pair_cosines: list[PairCosines] = []
    read_at: str = "last prompt token"
