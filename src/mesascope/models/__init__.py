"""Tiny models and tokenizers built from configs, local Hugging Face directories, fast generation."""

from .build import build_model, load_model, n_params
from .generate import generate
from .tokenizer import train_tokenizer

__all__ = ["build_model", "load_model", "n_params", "generate", "train_tokenizer"]
