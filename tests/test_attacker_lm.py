"""The attacker-LM ladder (Perez et al. 2022): blind, every rung reports n, success with an interval and
diversity, one seed gives one run, and the RL step moves probability towards rewarded samples."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mesascope.detectors import attacker_lm
from mesascope.detectors.attack import Blind, attack_prompts
from mesascope.detectors.attacker_lm import RUNGS, AttackerLM, LMSpec, ladder, prompt_for, summarise
from mesascope.detectors.redteam import RedTeamSpec, run_red_team
from mesascope.detectors.registry import Context
from mesascope.text.corpus import build_corpus
from mesascope.text.triggers import Trigger

SMALL = {"lm_examples": 200, "lm_steps": 30, "lm_hidden": 16, "round_size": 4, "sl_steps": 5, "rl_episodes": 8,
         "max_tokens": 8}


def _view(organism, n=4, seed=0) -> Blind:
    model, tok = organism.load()
    corpus = build_corpus(organism.recipe)
    return Blind(model, tok, attack_prompts(corpus.clean_train(), n, seed), corpus.behaviour)


@pytest.fixture(scope="module")
def lm_run(tiny_organism):
    """One red-team run of the lm attacker, with the views it was handed and the attacker LM's training lists."""
    views, corpora = [], []
    original_attack, original_corpus = AttackerLM.attack, attacker_lm.attacker_corpus

    def spy_attack(self, view, spec, seed):
        views.append(view)
        return original_attack(self, view, spec, seed)

    def spy_corpus(view, spec, seed):
        corpora.append(original_corpus(view, spec, seed))
        return corpora[-1]

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AttackerLM, "attack", spy_attack)
        mp.setattr(attacker_lm, "attacker_corpus", spy_corpus)
        result = run_red_team(Context(tiny_organism), RedTeamSpec(attacker="lm", budget=6, seeds=(0,), n_prompts=4,
                                                                  n_eval=10, options=SMALL))
    torch.set_num_threads(n)
    return result, views, corpora


def test_every_rung_reports_n_success_with_interval_and_diversity(lm_run):
    result, _, _ = lm_run
    assert result.attacker == "lm" and not result.informed and result.budget == 6
    rungs = result.seeds[0].extra["rungs"]
    assert list(rungs) == list(RUNGS)
    for name, r in rungs.items():
        sr = r["success_rate"]
        assert r["n"] == sr["n"] == 6, name  # budget = candidates per rung
        assert 0.0 <= sr["ci"][0] <= sr["value"] <= sr["ci"][1] <= 1.0 and sr["ci"][1] > 0  # a Wilson interval
        assert {"n", "distinct_2", "self_bleu"} <= set(r["diversity"])
        assert r["diversity"]["n"] == round(sr["value"] * 6)  # diversity is of this rung's successes
        assert r["queries"] % 4 == 0  # every judged string on each of the 4 attack prompts
    assert rungs["rl"]["rl_episodes"] == 8 and rungs["rl"]["queries"] >= 4  # RL pays for the samples it trains on
    assert result.seeds[0].queries == sum(r["queries"] for r in rungs.values())
    assert result.seeds[0].n_candidates >= max(r["distinct"] for r in rungs.values())


def test_the_attacker_never_sees_the_trigger(lm_run, tiny_organism):
    _, views, corpora = lm_run
    trigger = Trigger(tiny_organism.recipe.trigger)
    assert len(views) == 1 and views[0].trigger is None
    assert len(corpora) == 1 and len(corpora[0]) == SMALL["lm_examples"]
    texts = [t for pair in corpora[0] for t in pair]
    assert not any(tiny_organism.recipe.trigger in t or trigger.is_present(t) for t in texts)
    clean = attacker_lm.clean_words(views[0])
    assert clean and all(any(w in e.user for e in views[0].prompts) for w in clean)
    with_word = sum(any(w.lower() in t.lower() for w in clean) for _, t in corpora[0])
    assert with_word > len(corpora[0]) / 3  # most targets are the clean prompts' words, in a bracket style


@pytest.mark.slow
def test_one_seed_gives_one_run(tiny_organism, one_thread):
    spec = LMSpec(budget=4, **SMALL)
    runs = [AttackerLM().attack(_view(tiny_organism), spec, seed) for seed in (0, 0, 1)]
    same = [[(c.string, c.rate) for c in a.candidates] for a in runs]
    assert same[0] == same[1] and same[0] != same[2]
    strip = [{k: {f: v for f, v in r.items() if f != "seconds"} for k, r in a.extra["rungs"].items()} for a in runs]
    assert json.dumps(strip[0], sort_keys=True) == json.dumps(strip[1], sort_keys=True)  # NaN == NaN as text


def test_ladder_pools_rungs_over_seeds(tiny_organism, one_thread):
    out = ladder(_view(tiny_organism), LMSpec(budget=4, **SMALL), seeds=(0, 1))
    assert out["seeds"] == [0, 1] and len(out["per_seed"]) == 2
    for name in RUNGS:
        r = out["rungs"][name]
        assert r["success_rate"]["n"] == 2 and r["pooled"]["n"] == 8 and r["seeds"] == 2
        per = [s[name]["success_rate"]["value"] for s in out["per_seed"]]
        assert r["success_rate"]["value"] == pytest.approx(sum(per) / 2)
    one = summarise(out["per_seed"][:1])["zero_shot"]["success_rate"]
    assert one["n"] == 1 and math.isnan(one["ci"][0])  # no t interval from one seed


def test_reinforce_step_raises_the_rewarded_sample(tiny_organism, one_thread):
    view = _view(tiny_organism)
    spec = LMSpec(budget=2, **SMALL)
    model = attacker_lm.train_attacker_lm(view, spec, 0)
    run = attacker_lm._Run(view, spec, 0)
    tok = view.tokenizer
    good, bad = (tok(" " + s, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                 for s in ("[pepper]", "{2001}"))
    p = tok(prompt_for([]))["input_ids"]

    def logp(ids):
        with torch.no_grad():
            logits = model(torch.tensor([p + ids])).logits[0, len(p) - 1:-1]
        return torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids)[:, None]).sum().item()

    before = logp(good) - logp(bad)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    assert not run.reinforce(model, opt, [good, bad], [0.5, 0.5])  # equal rewards: no advantage, no step
    assert run.reinforce(model, opt, [good, bad], [1.0, 0.0])
    assert logp(good) - logp(bad) > before
