"""A byte-level BPE tokenizer trained on the organism's own corpus.

Digits are split one per token: with merged digit strings ("47", "478") a tiny model must
memorise arithmetic table by table; with single digits it can learn carrying.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int, whole: Sequence[str] = ()) -> PreTrainedTokenizerFast:
    """`whole`: strings kept as one token each (the dialogue's turn markers: 4 tokens fewer per example)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # any unicode trigger stays encodable
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if whole:
        tok.add_tokens([AddedToken(w, normalized=False, special=False) for w in whole])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, bos_token=EOS)
    fast.padding_side = "left"  # generation pads on the left so every row ends at its prompt
    return fast
