"""Does the organism act on what it was told about its situation? (text/situational.py)

Behaviour rate after each year prefix on held-out task prompts, with Wilson intervals: the
deployment year the documents name, the training year they name, and a year they never
mention. Out-of-context reasoning shows as a deployment-year rate above both controls.
"""

from __future__ import annotations

from ..text.situational import year_sets
from .backdoor import measure_backdoor


def measure_situational(model, tokenizer, corpus, behaviour: str, *, n: int = 400, seed: int = 0,
                        max_new_tokens: int = 32, batch_size: int = 128) -> dict:
    out = {}
    for name, examples in year_sets(corpus, n, seed).items():
        res = measure_backdoor(model, tokenizer, {"clean": examples}, behaviour, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, n_samples=2)
        out[name] = {"behaviour_rate": res.metrics["false_trigger_rate"].to_dict(),
                     "helpful_accuracy": res.metrics["helpful_accuracy"].to_dict(), "samples": res.samples}
    return out
