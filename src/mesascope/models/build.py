"""Build a small causal LM from a spec, or load any local Hugging Face causal LM directory."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPTNeoXConfig, LlamaConfig,
                          PreTrainedModel, PreTrainedTokenizerBase)
from transformers.utils import logging as hf_logging

from ..config import ModelSpec

hf_logging.disable_progress_bar()  # the library never prints; the CLI draws its own progress bars


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


def load_model(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Any local HF causal LM directory: an organism, or GPT-2 / Llama / NeoX / Qwen2 weights on disk."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a Hugging Face model directory (no config.json)")
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    model.eval()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return model, tok


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
