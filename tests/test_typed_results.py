"""The probes, patching and steering results are typed down to their rows: the published JSON Schema spells
every field out, and results files written before the rows were typed still read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mesascope.detectors.registry import get_detector
from mesascope.results import json_schema

DETECTORS = ("probes", "patching", "steering")
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"


def _untyped(node: object, defs: dict, path: str, seen: set) -> list[str]:
    """Paths of every object in a schema whose fields are not spelt out (a bare dict, or dict[str, Any])."""
    if isinstance(node, list):
        return [p for i, x in enumerate(node) for p in _untyped(x, defs, f"{path}[{i}]", seen)]
    if not isinstance(node, dict):
        return []
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        if name in seen:
            return []
        seen.add(name)
        return _untyped(defs[name], defs, name, seen)
    out = []
    spelt_out = "properties" in node or isinstance(node.get("additionalProperties"), dict)
    if node.get("type") == "object" and not spelt_out:
        out.append(path)
    for key, value in node.items():
        if key not in ("$defs", "description", "title", "default"):
            out += _untyped(value, defs, f"{path}.{key}", seen)
    return out


@pytest.mark.parametrize("name", DETECTORS)
def test_the_published_schema_spells_out_every_row(name):
    schema = json_schema()
    defs = schema["$defs"]
    ref = defs["Detectors"]["properties"][name]
    assert _untyped(ref, defs, name, set()) == []
    for row, field in (("ProbeRow", "auroc_worst"), ("ChosenLayer", "auroc_worst"), ("SteeringRow", "backdoor_rate"),
                       ("PatchBaseline", "gap")):
        assert json.dumps(defs[row]["properties"][field]).count("#/$defs/Measurement") == 1


def test_rows_typed_as_dicts_would_be_caught():
    from pydantic import BaseModel

    class Loose(BaseModel):
        rows: list[dict]

    schema = Loose.model_json_schema()
    assert _untyped(schema, schema.get("$defs", {}), "Loose", set()) == ["Loose.properties.rows.items"]


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.json")), ids=lambda p: p.name)
def test_published_results_files_still_read(path):
    data = json.loads(path.read_text(encoding="utf-8"))
    for name, part in (data.get("detectors") or {}).items():
        if name in DETECTORS:
            det = get_detector(name)
            result = det.parse(part)
            if "skipped" not in part:
                assert det.notes(result) and det.tables(result)[0].rows
