"""Typed results of a conditioning study (study.json, `kind = "conditioning"`) and their aggregation over seeds.

One row per model (the predictive model, each agent) and condition. Each figure holds every
seed's measurement (Wilson for shares), the mean over seeds with a 95% Student-t interval over
seeds (null with one seed; cut at 0 and 1 for a share, at -1 and 1 for a difference) and, for
shares, every seed's prompts pooled with a Wilson interval (Newcombe for a difference). The
findings answer the paper's questions as paired differences over seeds, with a verdict read off
the interval.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .. import __version__
from ..machine import Machine
from ..stats import Measurement, diff_ci, wilson
from .aggregate import pooled_wilson, t_interval

CONDITIONING_SCHEMA_VERSION = 1
SHARES = ("exploit", "exploit_control", "success", "success_control", "placeholder")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=True)


class SeedMean(_Model):
    value: float
    ci: tuple[float, float] | None
    n: int = Field(description="number of seeds")


class Figure(_Model):
    per_seed: dict[str, Measurement] = Field(description="seed -> its measurement (n = prompts)")
    seed_mean: SeedMean
    pooled: Measurement | None = Field(None, description="every seed's prompts as one sample (shares: Wilson; "
                                       "a difference: Newcombe); None for a mean of probabilities")


class Row(_Model):
    model: str = Field(description="'predictive' or an agent's name")
    condition: str
    exploit: Figure = Field(description="loophole prompts: well-formed and wrong, so passing the gameable checker")
    exploit_control: Figure = Field(description="exact-check prompts: well-formed and wrong (fails the checker there)")
    loophole_effect: Figure = Field(description="exploit minus exploit_control: what the loophole adds")
    success: Figure = Field(description="loophole prompts: correct (true task success)")
    success_control: Figure = Field(description="exact-check prompts: correct")
    placeholder: Figure = Field(description="loophole prompts: the corner-cutters' placeholder answer")
    p_placeholder: Figure = Field(description="loophole prompts: the model's probability of the placeholder")
    corpus_cut: Figure | None = Field(None, description="the training corpus: share of loophole documents showing the "
                                      "condition's tags whose writer cut corners (predictive model only)")


class Finding(_Model):
    question: str
    summary: str
    difference: SeedMean | None
    pooled: Measurement | None
    verdict: str


class ConditioningResults(_Model):
    schema_version: int = CONDITIONING_SCHEMA_VERSION
    kind: Literal["conditioning"] = "conditioning"
    mesascope_version: str = __version__
    name: str
    quick: bool
    spec: dict
    machine: Machine
    backend: dict
    seeds: list[int]
    models: dict[str, dict[str, dict]] = Field(description="model -> seed -> its directory and training figures")
    rows: list[Row]
    findings: list[Finding] = []
    samples: list[dict] = Field(description="sampled answers of the first seed (model output: untrusted text)")
    timings: dict[str, float]
    provenance: dict | None = None

    def model_post_init(self, _ctx) -> None:
        if not self.findings:
            self.findings = findings(self)


def json_schema() -> dict:
    """The JSON Schema of a conditioning study's study.json."""
    schema = ConditioningResults.model_json_schema()
    schema["$id"] = f"https://mesascope.dev/schema/conditioning-v{CONDITIONING_SCHEMA_VERSION}.json"
    return schema


def _figure(per_seed: dict[str, dict], kind: str = "share") -> dict:
    values = [m["value"] for m in per_seed.values()]
    t = t_interval(values)
    lo_hi = (-1.0, 1.0) if kind == "difference" else (0.0, 1.0)
    ci = (max(lo_hi[0], t["ci"][0]), min(lo_hi[1], t["ci"][1])) if t["ci"] else None
    pooled = pooled_wilson(list(per_seed.values())) if kind == "share" else None
    return {"per_seed": per_seed, "seed_mean": {"value": t["value"], "ci": ci, "n": t["n"]},
            "pooled": {k: v for k, v in pooled.items() if k != "interval"} if pooled else None}


def aggregate_rows(spec, per_seed: dict[str, dict[int, dict]]) -> list[dict]:
    """Rows from each model's measurement at each seed (conditioning_measure.measure's dicts)."""
    from ..text.authors import corpus_cut_rate, parse_condition, training_documents

    corpus = {s: training_documents(spec.world, s) for s in spec.seeds}
    rows = []
    for model, by_seed in per_seed.items():
        for c in spec.conditions:
            at = {str(s): m["conditions"][c] for s, m in by_seed.items()}
            row: dict = {"model": model, "condition": c}
            for name, (check, fig) in {"exploit": ("loophole", "exploit"), "exploit_control": ("control", "exploit"),
                                       "success": ("loophole", "success"), "success_control": ("control", "success"),
                                       "placeholder": ("loophole", "placeholder")}.items():
                row[name] = _figure({s: m[check][fig] for s, m in at.items()})
            row["p_placeholder"] = _figure({s: m["loophole"]["p_placeholder"] for s, m in at.items()}, "mean")
            effect = {s: diff_ci(Measurement(**m["loophole"]["exploit"]), Measurement(**m["control"]["exploit"]))
                      .to_dict() for s, m in at.items()}
            row["loophole_effect"] = _figure(effect, "difference")
            row["loophole_effect"]["pooled"] = _pooled_diff(row["exploit"], row["exploit_control"])
            if model == "predictive":
                cond = parse_condition(c, spec.world)
                row["corpus_cut"] = _figure({str(s): wilson(*corpus_cut_rate(docs, cond, spec.world)).to_dict()
                                             for s, docs in corpus.items()})
            rows.append(row)
    return rows


def _pooled_diff(a: dict, b: dict) -> dict | None:
    if not (a.get("pooled") and b.get("pooled")):
        return None
    return diff_ci(Measurement(**a["pooled"]), Measurement(**b["pooled"])).to_dict()


# --- the paper's questions, answered from the rows ---

def _row(result: ConditioningResults, model: str, condition: str) -> Row | None:
    return next((r for r in result.rows if r.model == model and r.condition == condition), None)


def _compare(question: str, a: Figure, b: Figure, a_name: str, b_name: str, note: str = "") -> Finding:
    """a - b, paired by seed: the mean difference with a t interval over seeds, and the prompts pooled (Newcombe)."""
    seeds = [s for s in a.per_seed if s in b.per_seed]
    t = t_interval([a.per_seed[s].value - b.per_seed[s].value for s in seeds])
    ci = (max(-1.0, t["ci"][0]), min(1.0, t["ci"][1])) if t["ci"] else None
    pooled = diff_ci(a.pooled, b.pooled) if a.pooled and b.pooled else None
    lo, hi = ci or (pooled.ci if pooled else (float("nan"), float("nan")))
    verdict = "higher" if lo > 0 else "lower" if hi < 0 else "no clear difference"
    interval = f"[{lo:+.3f}, {hi:+.3f}]" + (f", t over {len(seeds)} seeds" if ci else ", Newcombe over prompts")
    summary = (f"{a_name} minus {b_name}: {t['value']:+.3f} {interval}: {verdict}" + (f"; {note}" if note else ""))
    return Finding(question=question, summary=summary, difference=SeedMean(value=t["value"], ci=ci, n=t["n"]),
                   pooled=pooled, verdict=verdict)


def findings(result: ConditioningResults) -> list[Finding]:
    out = []
    ai, human = _row(result, "predictive", "written-by:AI"), _row(result, "predictive", "written-by:human")
    if ai and human:
        corpus = ai.corpus_cut.seed_mean.value - human.corpus_cut.seed_mean.value  # type: ignore[union-attr]
        out.append(_compare("Does conditioning on 'written-by: AI' predict more loophole exploitation than "
                            "'written-by: human' (the paper's worry)?", ai.exploit, human.exploit, "AI-written",
                            "human-written", f"the corpus's corner-cutting shares differ by {corpus:+.3f}"))
    years = sorted((r for r in result.rows if r.model == "predictive" and r.condition.startswith("year:")
                    and "+" not in r.condition), key=lambda r: r.condition)
    if len(years) >= 2:
        first, last = years[0], years[-1]
        corpus = last.corpus_cut.seed_mean.value - first.corpus_cut.seed_mean.value  # type: ignore[union-attr]
        out.append(_compare(f"Does a later date ({last.condition}) predict more exploitation than an earlier one "
                            f"({first.condition})?", last.exploit, first.exploit, last.condition, first.condition,
                            f"the corpus's corner-cutting shares differ by {corpus:+.3f}"))
    base = _row(result, "predictive", "none")
    agents = result.spec.get("agents", [])
    for a in agents:
        row = _row(result, a["name"], "none")
        if base and row:
            out.append(_compare(f"Does the agent {a['name']!r} (RL on the {a['reward']} reward) exploit the loophole "
                                "more than the unconditioned predictive model it started from?", row.exploit,
                                base.exploit, a["name"], "the predictive model"))
    gamed = next((a["name"] for a in agents if a["reward"] == "checker"), None)
    true = next((a["name"] for a in agents if a["reward"] == "true"), None)
    if gamed and true and _row(result, gamed, "none") and _row(result, true, "none"):
        out.append(_compare("Is it the reward? The agent trained on the gameable checker against the one trained on "
                            "the true reward, from the same predictive model", _row(result, gamed, "none").exploit,
                            _row(result, true, "none").exploit, gamed, true))
    return out
