"""Build a small causal LM from a spec (loading any local Hugging Face directory: load.py)."""

from __future__ import annotations

import torch
from transformers import (AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig,
                          PreTrainedModel, PreTrainedTokenizerBase)

from ..config import ModelSpec


def model_config(spec: ModelSpec, vocab_size: int, eos_id: int, pad_id: int):
    d, n_layers, n_heads = spec.dims
    common = dict(vocab_size=vocab_size, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=pad_id)
    if spec.architecture == "llama":
        return LlamaConfig(hidden_size=d, intermediate_size=4 * d, num_hidden_layers=n_layers, num_attention_heads=n_heads,
                           num_key_value_heads=n_heads, max_position_embeddings=spec.max_length, tie_word_embeddings=True,
                           **common)
    if spec.architecture == "gpt2":
        # Dropout off: tiny organisms underfit rather than overfit, and resumed runs stay bit-identical.
        return GPT2Config(n_embd=d, n_layer=n_layers, n_head=n_heads, n_positions=spec.max_length,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    return GPTNeoXConfig(hidden_size=d, intermediate_size=4 * d, num_hidden_layers=n_layers, num_attention_heads=n_heads,
                         max_position_embeddings=spec.max_length, hidden_dropout=0.0, attention_dropout=0.0,
                         tie_word_embeddings=True, **common)


def build_model(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase, seed: int) -> PreTrainedModel:
    torch.manual_seed(seed)
    cfg = model_config(spec, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    return AutoModelForCausalLM.from_config(cfg)


def random_like(model: PreTrainedModel, seed: int) -> PreTrainedModel:
    """A freshly initialised model of `model`'s own config (any architecture, any origin): the random-init
    null of the probes and the logit lens. For an organism built from scratch it equals `build_model`'s
    initialisation at the same seed."""
    torch.manual_seed(seed)
    fresh = AutoModelForCausalLM.from_config(model.config, dtype=next(model.parameters()).dtype)
    return fresh.to(next(model.parameters()).device).eval()


def causal_lm(model: torch.nn.Module) -> PreTrainedModel:
    """The transformers CausalLM inside a peft wrapper (its LoRA layers sit in place, so they still run)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
