"""Tiny models and tokenizers built from configs, local Hugging Face directories, fast generation."""

from .build import build_model, n_params
from .load import ModelError, check_model_dir, load_model, load_tokenizer
from .generate import generate
from .tokenizer import train_tokenizer

__all__ = ["ModelError", "build_model", "check_model_dir", "load_model", "load_tokenizer", "n_params", "generate", "train_tokenizer"]
