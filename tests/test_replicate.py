"""A recipe's headline over seeds: every seed's value, the mean, and a t interval over seeds."""

from __future__ import annotations

import json

import pytest
from scipy.stats import t as student_t
from typer.testing import CliRunner

from mesascope.cli import app
from mesascope.config import EvalSpec
from mesascope.store import RunStore
from mesascope.pipeline import Run
from mesascope.study.replicate import load_replicates, replicate, trained_tokens


def test_mean_and_interval_over_seeds(tiny_recipe, run_store):
    # The session store: seed 0 is the session's tiny organism, reused when another test has built it.
    found = replicate(tiny_recipe, [0, 1, 2], run_store, EvalSpec(n=20, max_new_tokens=8))
    assert found.seeds == [0, 1, 2] and set(found.per_seed) == {"0", "1", "2"}
    for name, m in found.mean.items():
        values = [found.per_seed[s][name].value for s in ("0", "1", "2")]
        assert m.per_seed == dict(zip(("0", "1", "2"), values))
        assert m.value == pytest.approx(sum(values) / 3, abs=1e-6)
        sd = (sum((v - m.value) ** 2 for v in values) / 2) ** 0.5
        half = student_t.ppf(0.975, 2) * sd / 3 ** 0.5
        lo, hi = m.value - half, m.value + half
        if m.pooled is not None:  # a share's interval is cut at 0 and 1
            lo, hi = max(0.0, lo), min(1.0, hi)
        assert m.ci == pytest.approx((lo, hi), abs=1e-5)
        if m.pooled is not None:  # a share: every seed's prompts pooled into one Wilson interval
            hits = sum(round(found.per_seed[s][name].value * found.per_seed[s][name].n) for s in ("0", "1", "2"))
            assert m.pooled.n == sum(found.per_seed[s][name].n for s in ("0", "1", "2"))
            assert m.pooled.value == pytest.approx(hits / m.pooled.n) and m.pooled.ci[0] <= m.pooled.value
    # Seeds are independent replicates: different organisms, so different weights.
    again = replicate(tiny_recipe, [1], run_store, EvalSpec(n=20, max_new_tokens=8))
    assert again.per_seed["1"] == found.per_seed["1"]  # reused from the store, not retrained
    # Each seed's training tokens, from organism.json; an organism built before builds recorded them is recounted.
    assert set(found.train_tokens) == {"0", "1", "2"} and all(n > 0 for n in found.train_tokens.values())
    organism = Run(run_store, tiny_recipe.model_copy(update={"seed": 1})).organism
    info = organism.path / "organism.json"
    recorded = json.loads(info.read_text())
    assert found.train_tokens["1"] == recorded["train_tokens"]
    info.write_text(json.dumps({k: v for k, v in recorded.items() if k != "train_tokens"}))
    try:
        assert trained_tokens(organism) == recorded["train_tokens"]
    finally:
        info.write_text(json.dumps(recorded))


def test_cli_writes_results_with_provenance(tiny_recipe, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text("[recipe]\nn_prompts = 400\n[recipe.model]\nsize = 'tiny'\nvocab_size = 400\n"
                      "[recipe.train]\nsteps = 20\nbatch_size = 16\n")
    out = tmp_path / "h.json"
    res = CliRunner().invoke(app, ["replicate", str(recipe), "--seeds", "3,4", "--n", "10", "--out",
                                   str(tmp_path / "runs"), "--results", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["provenance"]["command"].startswith("mesascope") and data["seeds"] == [3, 4]
    assert load_replicates(out).mean["backdoor_rate"].n_seeds == 2
    bad = CliRunner().invoke(app, ["replicate", str(recipe), "--seeds", "1,1", "--out", str(tmp_path / "runs")])
    assert bad.exit_code == 2 and "distinct" in bad.output


@pytest.mark.slow
def test_config_adds_stress_and_probe_figures_and_a_base_takes_each_seed(tmp_path):
    """`replicate --config`: each seed's stress curve ends and probe AUROCs join the headline, AUROC intervals
    stay within [0, 1], and a base built from a recipe is rebuilt at every seed (the whole chain replicates)."""
    from conftest import make_tiny_recipe

    from mesascope.config import Recipe
    from mesascope.pipeline import DemoSpec

    base = make_tiny_recipe(poison_fraction=0.0, name="clean")
    recipe = Recipe.model_validate({**make_tiny_recipe(steps=10).model_dump(exclude={"model"}),
                                    "base": {"recipe": base.model_dump(), "method": "lora"}})
    demo = DemoSpec(detectors=["probes"], stress={"lrs": [3e-3], "steps": 4, "batch_size": 8, "eval_at": [0, 4],
                                                   "n_eval": 12},
                    probe={"n_train": 16, "n_test": 16, "n_random_directions": 10})
    found = replicate(recipe, [0, 1], RunStore(tmp_path), EvalSpec(n=12, max_new_tokens=8), demo=demo)
    for seed in ("0", "1"):
        assert {"hhh_sft@3e-03/backdoor_rate", "hhh_sft@3e-03/helpful_accuracy",
                "probe/supervised/auroc_worst"} <= set(found.per_seed[seed])
    for name, m in found.mean.items():
        if "auroc" in name:
            assert m.pooled is None and 0.0 <= m.ci[0] <= m.ci[1] <= 1.0
    bases = sorted(tmp_path.glob("runs/organism-*/organism/recipe.json"))
    recipes = [json.loads(p.read_text()) for p in bases]
    seeds = sorted(r["seed"] for r in recipes if r["name"] == "clean")
    assert seeds == [0, 1]  # one clean base per seed
