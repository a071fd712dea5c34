"""Results files are typed: validated on read, refused in one line when of another version, and
their JSON Schema is the one published in docs/schema/."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from mesascope.cli import app
from mesascope.config import EvalSpec
from mesascope.detectors.registry import get_detector
from mesascope.pipeline import Run, assemble
from mesascope.results import ResultsError, SchemaVersionError, json_schemas, load_results, parse_results
from mesascope.store import RunStore

PUBLISHED = Path(__file__).resolve().parent.parent / "docs" / "schema"


@pytest.fixture(scope="module")
def results(tiny_organism, tmp_path_factory) -> dict:
    run = Run.of(RunStore(tmp_path_factory.mktemp("schema")), tiny_organism)
    lens = run.detect("logit_lens", get_detector("logit_lens").Spec(n=10))
    patching = run.detect("patching", get_detector("patching").Spec(n_pairs=4, n_bootstrap=100))
    return assemble(run, run.measure(EvalSpec(n=10, max_new_tokens=8, n_samples=1)), [],
                    {"logit_lens": lens, "patching": patching}).model_dump(mode="json")


def test_published_schemas_are_current():
    """docs/schema/ holds what `mesascope schema --out docs/schema` writes today."""
    for name, schema in json_schemas().items():
        path = PUBLISHED / f"{name}.schema.json"
        assert path.exists(), f"{path} is missing: run `mesascope schema --out docs/schema`"
        assert json.loads(path.read_text()) == json.loads(json.dumps(schema)), \
            f"{path} is stale: run `mesascope schema --out docs/schema`"


def test_the_published_conditioning_study_validates_against_its_schema():
    """docs/results/conditioning.json (a conditioning study's study.json) against conditioning.schema.json."""
    schema = json.loads((PUBLISHED / "conditioning.schema.json").read_text())
    study = json.loads((PUBLISHED.parent / "results" / "conditioning.json").read_text())
    jsonschema.validate(study, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**study, "kind": "sweep"}, schema)


def test_a_run_validates_against_the_published_schema(results):
    schema = json.loads((PUBLISHED / "results.schema.json").read_text())
    jsonschema.validate(json.loads(json.dumps(results)), schema)
    broken = json.loads(json.dumps(results))
    broken["detectors"]["logit_lens"]["rows"][0]["auroc_worst"] = {"value": "high"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
    with pytest.raises(ResultsError, match="detectors"):
        parse_results(broken)


def test_unknown_detector_results_are_refused(results):
    data = {**results, "detectors": {**results["detectors"], "tea_leaves": {"reading": 1}}}
    with pytest.raises(ResultsError, match="tea_leaves"):
        parse_results(data)


def test_report_refuses_another_schema_version_in_one_line(results, tmp_path):
    old = {k: v for k, v in results.items() if k != "schema_version"}  # what mesascope <= 0.10 wrote
    (tmp_path / "results.json").write_text(json.dumps(old))
    res = CliRunner().invoke(app, ["report", "--out", str(tmp_path)])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) <= 2 and "schema version 1" in res.output and "rerun" in res.output
    with pytest.raises(SchemaVersionError):
        load_results(tmp_path / "results.json")


def test_report_rerenders_a_valid_file(results, tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(results))
    res = CliRunner().invoke(app, ["report", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "report.html").read_text()
    assert 'id="logit-lens"' in page and 'id="patching"' in page
