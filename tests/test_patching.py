"""Activation patching changes exactly what it patches: nothing for a self-patch, everything for a full patch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mesascope.config import ModelSpec
from mesascope.detectors.patching import (
    Patching,
    PatchingResult,
    activation_patching,
    edit_residual,
    filler_strings,
    patch_points,
    make_pairs,
    patched_logprobs,
    position_slots,
    trigger_span,
)
from mesascope.models import build_model
from mesascope.text.corpus import build_corpus


@pytest.fixture(scope="module")
def loaded(tiny_organism):
    model, tok = tiny_organism.load()
    corpus = build_corpus(tiny_organism.recipe)
    return model, tok, corpus


@pytest.fixture(scope="module")
def pairs(loaded):
    model, tok, corpus = loaded
    return make_pairs(tok, corpus, 12, counterparts=corpus.near_miss_held_out + corpus.near_miss_train)


def _cont(tok, response: str, k: int = 3) -> list[int]:
    return tok(" " + response, add_special_tokens=False)["input_ids"][:k]


def test_pairs_line_up_outside_the_trigger_span(loaded, pairs):
    _, tok, corpus = loaded
    assert len(pairs) >= 4
    for p in pairs:
        t_ids, span = trigger_span(tok, p.triggered, corpus.trigger)
        c_ids = tok(p.clean, add_special_tokens=False)["input_ids"]
        assert span == p.span and len(t_ids) == len(c_ids) == p.n_prompt
        a, b = span
        assert t_ids[:a] == c_ids[:a] and t_ids[b:] == c_ids[b:] and t_ids[a:b] != c_ids[a:b]
        assert corpus.trigger in p.triggered and corpus.trigger not in p.clean
        assert p.counterpart in p.clean
        # The span's text is the trigger (give or take the space the tokenizer glues on).
        assert tok.decode(t_ids[a:b]).strip() == corpus.trigger


def test_baseline_logprob_matches_an_unbatched_forward(loaded, pairs):
    """Independent computation: one prompt at a time, no padding, plain log_softmax."""
    model, tok, corpus = loaded
    cont = _cont(tok, corpus.response)
    prompts = [p.triggered for p in pairs]
    r = patched_logprobs(model, tok, prompts, prompts, cont, [], [], batch_size=5)
    for i, prompt in enumerate(prompts):
        ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"] + cont])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        n = ids.shape[1] - len(cont)
        ref = sum(logp[n - 1 + j, t].item() for j, t in enumerate(cont))
        assert r["target"][i] == pytest.approx(ref, abs=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
def test_self_patch_is_zero_and_full_patch_reproduces_the_source(arch, loaded, pairs):
    _, tok, corpus = loaded
    model = build_model(ModelSpec(architecture=arch, size="tiny", vocab_size=400), tok, seed=1).eval()
    cont = _cont(tok, corpus.response)
    points = patch_points(model)
    slots = position_slots(tok, pairs, len(cont))
    trig, clean = [p.triggered for p in pairs], [p.clean for p in pairs]
    same = patched_logprobs(model, tok, trig, trig, cont, points, slots, batch_size=5)
    np.testing.assert_allclose(same["patched"], np.broadcast_to(same["target"], same["patched"].shape), atol=1e-5)
    r = patched_logprobs(model, tok, clean, trig, cont, points, slots, batch_size=5)
    assert np.abs(r["source"] - r["target"]).max() > 1e-3  # the runs differ, so the checks below can fail
    full = [s.role for s in slots].index("all")
    np.testing.assert_allclose(r["patched"][:, full], np.broadcast_to(r["source"], r["patched"][:, full].shape),
                               atol=1e-4)
    # Positions before the trigger hold the same tokens and see only the same tokens (causal
    # attention), so patching them changes nothing at any layer.
    prefix = [c for c, s in enumerate(slots) if s.role == "prefix"]
    assert prefix
    expect = np.broadcast_to(r["target"], (len(points), len(prefix), len(pairs)))
    np.testing.assert_allclose(r["patched"][:, prefix], expect, atol=1e-5)
    # Some single-position patch inside the trigger span does move the log-prob at the embeddings.
    span = [c for c, s in enumerate(slots) if s.role == "trigger"]
    assert np.abs(r["patched"][0, span] - r["target"]).max() > 1e-4


def test_patching_one_embedding_equals_swapping_that_token(loaded, pairs):
    """Independent computation: patching position j at blocks.0.resid_pre is the clean prompt
    with the triggered prompt's token j put in its place, run without any hook."""
    model, tok, corpus = loaded
    cont = _cont(tok, corpus.response)
    slots = position_slots(tok, pairs, len(cont))
    r = patched_logprobs(model, tok, [p.clean for p in pairs], [p.triggered for p in pairs], cont,
                         ["blocks.0.resid_pre"], slots, batch_size=5)
    checked = 0
    for c, slot in enumerate(slots):
        if slot.role not in ("prefix", "trigger", "end"):
            continue
        for i, p in enumerate(pairs):
            (j,) = slot.positions[i]
            ids = tok(p.clean, add_special_tokens=False)["input_ids"]
            ids[j] = tok(p.triggered, add_special_tokens=False)["input_ids"][j]
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([ids + cont])).logits[0].float(), -1)
            ref = sum(logp[len(ids) - 1 + m, t].item() for m, t in enumerate(cont))
            assert r["patched"][0, c, i] == pytest.approx(ref, abs=1e-4)
            checked += 1
    assert checked >= 3 * len(pairs)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_resid_pre_of_block_0_is_the_embedding(arch, loaded):
    _, tok, _ = loaded
    model = build_model(ModelSpec(architecture=arch, size="tiny", vocab_size=400), tok, seed=1).eval()
    ids = torch.tensor([tok("Human: hello\n\nAssistant:", add_special_tokens=False)["input_ids"]])
    seen = {}
    with torch.no_grad(), edit_residual(model, "blocks.0.resid_pre", lambda x: seen.setdefault("x", x.clone())):
        model(input_ids=ids)
    emb = model.get_input_embeddings()(ids)
    if arch == "gpt2":  # learned positions are added before block 0
        emb = emb + model.transformer.wpe(torch.arange(ids.shape[1]))[None]
    torch.testing.assert_close(seen["x"], emb)


def test_activation_patching_result_is_a_renderable_heatmap(loaded, pairs):
    model, tok, corpus = loaded
    seen = []
    res = activation_patching(model, tok, pairs, corpus.response, k=3, n_bootstrap=100,
                              progress=lambda task, done, total: seen.append((done, total)))
    json.dumps(res)  # JSON-ready
    n_points, n_cols = len(res["points"]), len(res["positions"])
    assert res["points"][0] == "blocks.0.resid_pre" and n_points == 1 + model.config.num_hidden_layers
    for name in ("denoising", "noising"):
        for key in ("delta", "normalised", "delta_ci", "normalised_ci"):
            assert len(res[name][key]) == n_points and all(len(row) == n_cols for row in res[name][key])
        full = [p["role"] for p in res["positions"]].index("all")
        assert all(row[full] == pytest.approx(1.0, abs=1e-3) for row in res[name]["normalised"])
        ci = res[name]["delta_ci"][0][0]
        assert ci["n"] == len(pairs) and ci["ci"][0] <= ci["value"] <= ci["ci"][1]
    gap = res["baseline"]["gap"]["value"]
    base = res["baseline"]
    assert gap == pytest.approx(base["triggered_logprob"]["value"] - base["clean_logprob"]["value"], abs=1e-4)
    assert seen[-1][0] == seen[-1][1]
    # The typed result reads it and writes back the very same JSON; its notes read the typed positions.
    stored = {"counterpart_kind": "near_miss", "n_pairs_requested": len(pairs), **json.loads(json.dumps(res))}
    typed = PatchingResult.model_validate(stored)
    assert typed.model_dump(mode="json") == stored
    assert typed.positions[full].role == "all" and Patching().tables(typed)[0].rows[0][0] == "blocks.0.resid_pre"


def test_filler_counterparts_differ_at_every_trigger_token(loaded):
    _, tok, corpus = loaded
    fillers = filler_strings(tok, corpus.trigger, n=4)
    assert fillers
    pairs = make_pairs(tok, corpus, 6, counterparts=fillers)
    for p in pairs:
        a, b = p.span
        t = tok(p.triggered, add_special_tokens=False)["input_ids"]
        c = tok(p.clean, add_special_tokens=False)["input_ids"]
        assert all(x != y for x, y in zip(t[a:b], c[a:b]))


def test_bad_inputs_are_named(loaded):
    model, tok, corpus = loaded
    with pytest.raises(ValueError, match="counterpart"):
        make_pairs(tok, corpus, 4, counterparts=[])
    with pytest.raises(ValueError, match="hook point"):
        with edit_residual(model, "blocks.0.mlp", lambda x: x):
            pass
    with pytest.raises(ValueError, match="pairs is empty"):
        activation_patching(model, tok, [], corpus.response)


def test_normalised_interval_stays_finite_when_the_gap_reaches_zero():
    """An organism without a real backdoor has a clean-to-triggered gap near 0: resamples with a zero gap made
    the normalised interval NaN, results.json then failed its own schema and the next command dropped it."""
    import json

    import numpy as np

    from mesascope.detectors.patching import UNBOUNDED, _mean_ci
    from mesascope.stats import Measurement

    for delta, gap in [([0.1, -0.1, 0.0, 0.05], [0.01, -0.01, 0.0, 0.0]), ([0.0, 0.0], [0.0, 0.0])]:
        m = _mean_ci(np.array(delta), np.array(gap), 200, 0)
        assert all(np.isfinite([m.value, *m.ci])) and m.ci[1] == UNBOUNDED
        assert Measurement.model_validate(json.loads(json.dumps(m.model_dump(mode="json")))) == m
    ok = _mean_ci(np.array([0.1, 0.2, 0.15]), np.array([1.0, 1.1, 0.9]), 200, 0)
    assert abs(ok.value - 0.15) < 1e-12 and ok.ci[0] < ok.value < ok.ci[1] < 1
