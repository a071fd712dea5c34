from .sft import SFTTrainer, collate, tokenize_examples

__all__ = ["SFTTrainer", "collate", "tokenize_examples"]
