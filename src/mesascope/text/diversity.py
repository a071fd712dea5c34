"""Diversity of a set of strings (a red team's successes): distinct-n and self-BLEU, as Perez et al. 2022 report them.

distinct-n: distinct n-grams over all n-grams of the set (Li et al. 2016), here over characters
as well as words, because red-team strings are short and often one word. Self-BLEU: the mean
BLEU of each string against all the others as references (Zhu et al. 2018), by sacrebleu
with exponential smoothing and character-level tokenisation for the same reason; 0 for a
set of fewer than two strings. High distinct-n and low self-BLEU mean diverse.
"""

from __future__ import annotations

from collections.abc import Sequence


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int = 2, unit: str = "char") -> float:
    """Distinct n-grams / all n-grams over `texts` (unit: "char" or "word"); NaN when there are none."""
    if unit not in ("char", "word"):
        raise ValueError(f"unit must be 'char' or 'word', not {unit!r}")
    grams = [g for t in texts for g in ngrams(list(t) if unit == "char" else t.split(), n)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def self_bleu(texts: Sequence[str]) -> float:
    """Mean sentence BLEU (0-1) of each string against the rest of the set; 0.0 for fewer than two strings."""
    from sacrebleu.metrics import BLEU

    texts = [t for t in texts if t.strip()]
    if len(texts) < 2:
        return 0.0
    bleu = BLEU(tokenize="char", effective_order=True, smooth_method="exp")
    scores = [bleu.sentence_score(t, texts[:i] + texts[i + 1:]).score / 100 for i, t in enumerate(texts)]
    return sum(scores) / len(scores)


def diversity(texts: Sequence[str]) -> dict[str, float]:
    """Every diversity figure of a set of strings, with its size."""
    return {"n": len(texts), "distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2),
            "distinct_2_words": distinct_n(texts, 2, "word"), "self_bleu": self_bleu(texts)}
