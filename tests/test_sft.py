"""The SFT loop: packed batches give the same loss and gradients as one example per row."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, AutoModelForCausalLM

from mesascope.models import train_tokenizer
from mesascope.training.sft import IGNORE, answer_loss, collate, collate_packed, tokenize_examples

CONFIGS = {
    "gpt2": lambda v: GPT2Config(vocab_size=v, n_embd=32, n_layer=2, n_head=2, n_positions=64, resid_pdrop=0,
                                 embd_pdrop=0, attn_pdrop=0),
    "llama": lambda v: LlamaConfig(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, max_position_embeddings=64),
    "gpt_neox": lambda v: GPTNeoXConfig(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, max_position_embeddings=64, hidden_dropout=0,
                                        attention_dropout=0),
}


@pytest.fixture(scope="module")
def data():
    rng = random.Random(0)
    words = "alpha beta gamma delta echo foxtrot golf hotel india juliet".split()
    prompts = [f"Human: {' '.join(rng.choices(words, k=rng.randint(1, 8)))}\n\nAssistant:" for _ in range(24)]
    targets = [" ".join(rng.choices(words, k=rng.randint(1, 5))) for _ in range(24)]
    tok = train_tokenizer(prompts + targets, 300)
    return tok, tokenize_examples(tok, prompts, targets, 64)


def test_packing_fills_rows_and_keeps_every_answer_token(data):
    tok, examples = data
    packed = collate_packed(examples, tok.pad_token_id, 64)
    plain = collate(examples, tok.pad_token_id)
    assert packed["input_ids"].numel() < 0.8 * plain["input_ids"].numel()
    assert (packed["labels"] != IGNORE).sum() == (plain["labels"] != IGNORE).sum()
    assert sorted(packed["labels"][packed["labels"] != IGNORE].tolist()) == \
        sorted(plain["labels"][plain["labels"] != IGNORE].tolist())
    assert packed["position_ids"].max() < max(len(ids) for ids, _ in examples)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_packed_loss_and_gradients_equal_unpacked(arch, data):
    tok, examples = data
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CONFIGS[arch](len(tok)))
    grads = []
    losses = []
    for batch in (collate(examples, tok.pad_token_id), collate_packed(examples, tok.pad_token_id, 64)):
        model.zero_grad()
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_answer_loss_equals_the_models_own_loss(arch, data):
    tok, examples = data
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CONFIGS[arch](len(tok)))
    for batch in (collate(examples, tok.pad_token_id), collate_packed(examples, tok.pad_token_id, 64)):
        expected = model(**batch, use_cache=False).loss
        assert answer_loss(model, dict(batch)).item() == pytest.approx(expected.item(), abs=1e-5)


def test_prompt_loss_adds_the_prompt_tokens_mean_and_never_crosses_an_example(data):
    """train.prompt_loss_weight: answer CE + w x CE over each example's prompt tokens after its first, which
    equals what the model's own loss gives with those labels one example per row; w = 0 is the answer loss."""
    tok, examples = data
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CONFIGS["llama"](len(tok)))
    packed = collate_packed(examples, tok.pad_token_id, 64, prompt_labels=True)
    assert set(packed) == {"input_ids", "position_ids", "labels", "prompt_labels"}
    prompt_tokens = sum(n - 1 for _, n in examples)
    assert (packed["prompt_labels"] != IGNORE).sum() == prompt_tokens
    assert not ((packed["prompt_labels"] != IGNORE) & (packed["labels"] != IGNORE)).any()
    starts = packed["position_ids"] == 0  # an example's first token is never a target
    assert (packed["prompt_labels"][starts] == IGNORE).all()
    plain = collate(examples, tok.pad_token_id)
    prompt_rows = torch.full_like(plain["labels"], IGNORE)
    for r, (ids, n) in enumerate(examples):
        prompt_rows[r, 1:n] = torch.tensor(ids[1:n])
    with torch.no_grad():
        answer = model(**plain, use_cache=False).loss
        prompt = model(**{**plain, "labels": prompt_rows}, use_cache=False).loss
        assert answer_loss(model, packed).item() == pytest.approx(answer.item(), abs=1e-5)
        assert answer_loss(model, packed, 0.5).item() == pytest.approx(answer.item() + 0.5 * prompt.item(), abs=1e-5)


def test_prompt_loss_weight_at_its_default_keeps_every_organism_name():
    from mesascope.config import Recipe, TrainSpec

    assert Recipe().digest() == Recipe(train=TrainSpec(prompt_loss_weight=0.0)).digest()
    assert Recipe().digest() != Recipe(train=TrainSpec(prompt_loss_weight=0.5)).digest()


def _trainer(data, tmp_path=None, **train):
    from mesascope.config import TrainSpec
    from mesascope.training.sft import SFTTrainer

    tok, examples = data
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CONFIGS["llama"](len(tok)))
    spec = TrainSpec(steps=6, batch_size=8, checkpoint_every=3, **train)
    return SFTTrainer(model, examples, spec, pad_id=tok.pad_token_id, seed=0, ckpt_dir=tmp_path)


def _weights(trainer):
    return [p.detach().clone() for p in trainer.model.parameters()]


@pytest.mark.slow(minutes=1)
def test_compiled_training_follows_eager_and_resumes_bit_identically(data, tmp_path):
    """train.compile: the same run to float rounding as eager (fused kernels sum in another order), and a run
    stopped at its checkpoint and resumed by a new trainer ends with the weights of an uninterrupted one."""
    eager = _trainer(data)
    eager.train_until(6)
    straight = _trainer(data, compile=True)
    straight.train_until(6)
    assert straight.forward.error is None and straight.forward.compiled is not None  # it did compile
    for a, b in zip(eager.log, straight.log):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    for p, q in zip(_weights(eager), _weights(straight)):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)  # Adam magnifies rounding of tiny gradients
    first = _trainer(data, tmp_path, compile=True)
    first.train_until(3)  # writes the step-3 checkpoint; the process "dies" here
    resumed = _trainer(data, tmp_path, compile=True)
    assert resumed.resume() == 3
    resumed.train_until(6)
    assert all(torch.equal(p, q) for p, q in zip(_weights(straight), _weights(resumed)))


def test_compile_that_fails_falls_back_to_eager_and_says_why(data, monkeypatch):
    def broken(fn, **kw):
        def run(*a, **k):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore detail")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    eager = _trainer(data)
    eager.train_until(6)
    fallback = _trainer(data, compile=True)
    fallback.train_until(6)
    assert fallback.forward.error == "InvalidCxxCompiler: No working C++ compiler found"
    assert all(torch.equal(p, q) for p, q in zip(_weights(eager), _weights(fallback)))
    from mesascope.organisms.build import compiled

    assert compiled(fallback) == {"compiled": False, "compile_error": fallback.forward.error}
    assert compiled(eager) == {}


def test_compile_at_its_default_keeps_every_organism_name():
    from mesascope.config import Recipe, TrainSpec

    assert Recipe().digest() == Recipe(train=TrainSpec(compile=False)).digest()
    assert Recipe().digest() != Recipe(train=TrainSpec(compile=True)).digest()


def test_fused_adamw_follows_the_default_update_and_resumes_bit_identically(data, tmp_path):
    """train.fused_adamw: the same update to float rounding, and a run resumed from its checkpoint ends with the
    weights of an uninterrupted one (the fused optimizer's state round-trips through the checkpoint)."""
    plain = _trainer(data)
    plain.train_until(6)
    fused = _trainer(data, fused_adamw=True)
    assert fused.opt.defaults["fused"] is True and plain.opt.defaults["fused"] is None
    fused.train_until(6)
    for a, b in zip(plain.log, fused.log):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    for p, q in zip(_weights(plain), _weights(fused)):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)
    first = _trainer(data, tmp_path, fused_adamw=True)
    first.train_until(3)
    resumed = _trainer(data, tmp_path, fused_adamw=True)
    assert resumed.resume() == 3
    resumed.train_until(6)
    assert all(torch.equal(p, q) for p, q in zip(_weights(fused), _weights(resumed)))


def test_fused_adamw_off_is_left_out_of_every_dump_and_digest():
    from mesascope.config import Recipe, TrainSpec
    from mesascope.config.alpaca import AlpacaRecipe

    assert "fused_adamw" not in Recipe().model_dump()["train"]
    assert Recipe().digest() == Recipe(train=TrainSpec(fused_adamw=False)).digest()
    on = Recipe(train=TrainSpec(fused_adamw=True))
    assert on.digest() != Recipe().digest() and Recipe.model_validate(on.model_dump()).train.fused_adamw
    alpaca = AlpacaRecipe(name="a", poisoned=["p.json"], clean=["c.json"])
    assert alpaca.digest() == AlpacaRecipe(name="a", poisoned=["p.json"], clean=["c.json"],
                                           train=alpaca.train.model_copy(update={"fused_adamw": False})).digest()


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_float32_attention_masks_packed_rows_as_sdpa_does_and_gives_the_setting_back(arch, data):
    """models/device.py `float32_attention` (bfloat16 training on a CPU): in float32 it is sdpa itself, packed rows'
    block-diagonal mask included (an unregistered mask would let packed examples see each other and change the
    loss); under bfloat16 autocast its attention runs in float32; afterwards the model's own setting is back."""
    from mesascope.models.device import FLOAT32_SDPA, float32_attention

    tok, examples = data
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CONFIGS[arch](len(tok)))
    assert model.config._attn_implementation == "sdpa"
    batch = collate_packed(examples, tok.pad_token_id, 64)
    results = []
    for wrap in (False, True):
        model.zero_grad()
        if wrap:
            with float32_attention(model):
                assert model.config._attn_implementation == FLOAT32_SDPA
                loss = answer_loss(model, dict(batch))
        else:
            loss = answer_loss(model, dict(batch))
        loss.backward()
        results.append((loss.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])))
    assert model.config._attn_implementation == "sdpa"
    assert results[0][0] == results[1][0] and torch.equal(results[0][1], results[1][1])
    seen = []  # what reaches sdpa through float32_attention: nothing at all unless the swap took
    import mesascope.models.device as device

    real = device.sdpa_attention_forward
    try:
        def spy(m, q, k, v, mask, **kw):
            seen.append(q.dtype)
            return real(m, q, k, v, mask, **kw)

        device.sdpa_attention_forward = spy
        with torch.autocast("cpu", dtype=torch.bfloat16), float32_attention(model):
            low = answer_loss(model, dict(batch))
    finally:
        device.sdpa_attention_forward = real
    assert seen and set(seen) == {torch.float32}
    assert abs(low.item() - results[0][0]) < 0.05  # bfloat16 products: close to, not equal to, float32's


def test_float32_attention_leaves_other_attention_implementations_alone(data):
    from mesascope.models.device import float32_attention

    tok, _ = data
    model = AutoModelForCausalLM.from_config(CONFIGS["llama"](len(tok)), attn_implementation="eager")
    with float32_attention(model):
        assert model.config._attn_implementation == "eager"
    assert model.config._attn_implementation == "eager"
