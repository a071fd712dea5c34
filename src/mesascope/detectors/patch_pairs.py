"""Prompt pairs for activation patching: a triggered prompt and a position-aligned counterpart.

The Trigger object says where the trigger sits in a prompt (`locate`) and swaps it for another
string (`counterpart`), so a string, year or semantic trigger is handled the same way. Columns of
the heatmap (`position_slots`) are anchored to roles: before and in the trigger, the task body,
the prompt's end and the teacher-forced response.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from ..text.corpus import Corpus, format_prompt
from ..text.triggers import Trigger


@dataclass(frozen=True)
class PatchPair:
    """A triggered prompt and its position-aligned clean counterpart (token ids identical outside the span)."""

    triggered: str
    clean: str
    counterpart: str  # the string that replaced the trigger
    family: str
    n_prompt: int  # tokens in either prompt
    span: tuple[int, int]  # token positions [start, end) covering the trigger


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def trigger_span(tokenizer, prompt: str, trigger: Trigger | str) -> tuple[list[int], tuple[int, int]]:
    """Token ids of `prompt` and the token positions [start, end) whose characters overlap the trigger
    (the Trigger says where it sits; a plain string is a string trigger)."""
    trigger = Trigger(trigger) if isinstance(trigger, str) else trigger
    enc = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    where = trigger.locate(prompt)
    if where is None:
        raise ValueError(f"the trigger {trigger.text!r} is not in the prompt {prompt[:80]!r}")
    c0, c1 = where
    hit = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if s < c1 and e > c0]
    return enc["input_ids"], (hit[0], hit[-1] + 1)


def _aligned(t_ids: list[int], c_ids: list[int], span: tuple[int, int]) -> bool:
    a, b = span
    return len(t_ids) == len(c_ids) and t_ids[:a] == c_ids[:a] and t_ids[b:] == c_ids[b:] and t_ids[a:b] != c_ids[a:b]


def filler_strings(tokenizer, trigger: Trigger | str, n: int = 12, seed: int = 0, tries: int = 4000) -> list[str]:
    """Random strings of vocabulary tokens that differ from the trigger at every token of its span."""
    trigger = Trigger(trigger) if isinstance(trigger, str) else trigger
    rng = random.Random(f"filler:{seed}")
    triggered = trigger.deployment("Hello.")
    t_ids, span = trigger_span(tokenizer, format_prompt(triggered), trigger)
    width = span[1] - span[0]
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    vocab = [i for i in range(len(tokenizer)) if i not in special]
    out: list[str] = []
    for _ in range(tries):
        s = tokenizer.decode(rng.sample(vocab, width)).strip()
        if not s or not s.isprintable() or trigger.is_present(s) or s in out:
            continue
        c_ids = _ids(tokenizer, format_prompt(trigger.counterpart(triggered, s)))
        a, b = span
        if _aligned(t_ids, c_ids, span) and all(x != y for x, y in zip(t_ids[a:b], c_ids[a:b])):
            out.append(s)
            if len(out) == n:
                break
    return out


def make_pairs(tokenizer, corpus: Corpus, n: int, *, counterparts: Sequence[str] | None = None,
               seed: int = 0) -> list[PatchPair]:
    """n position-aligned pairs from held-out items; counterparts default to the held-out near misses.

    Each item takes the first counterpart (in a seeded random order) whose prompt tokenizes to
    the same ids outside the trigger span; items none fits are skipped. Pairs whose trigger
    span has an unusual token count are dropped, so each span position means the same token.
    """
    pool = list(corpus.near_miss_held_out if counterparts is None else counterparts)
    if not pool:
        raise ValueError("no counterpart strings: pass counterparts=[...] (e.g. filler_strings(tokenizer, trigger))")
    if n < 2:
        raise ValueError(f"n must be >= 2 pairs for an interval (got {n})")
    rng = random.Random(f"patch-pairs:{seed}")
    trig = corpus.trigger_spec
    pairs: list[PatchPair] = []
    for ex in corpus.eval_set("triggered", 4 * n, seed=seed):
        t_ids, span = trigger_span(tokenizer, ex.prompt, trig)
        for s in rng.sample(pool, len(pool)):
            clean = format_prompt(trig.counterpart(ex.user, s))  # the trigger's span replaced, nothing else
            if _aligned(t_ids, _ids(tokenizer, clean), span):
                pairs.append(PatchPair(ex.prompt, clean, s, ex.family, len(t_ids), span))
                break
    spans = Counter((p.span[0], p.span[1]) for p in pairs)
    if not spans:
        raise ValueError("no counterpart string tokenizes to the trigger's token length in any prompt: "
                         "pass counterparts=filler_strings(tokenizer, trigger)")
    common = spans.most_common(1)[0][0]
    return [p for p in pairs if p.span == common][:n]


@dataclass(frozen=True)
class Slot:
    """One heatmap column: the prompt-relative positions it patches in each pair (several = patched together)."""

    label: str
    role: str  # "prefix", "trigger", "body", "end", "response" or "all"
    positions: list[list[int]]


def position_slots(tokenizer, pairs: Sequence[PatchPair], k: int, n_end: int = 2) -> list[Slot]:
    """Columns anchored to roles: tokens before and in the trigger span, the task body (one
    group), the last `n_end` prompt tokens (the final one is "\\n\\nAssistant:"), the teacher-
    forced response tokens (one group), and every position at once (a sanity column: exactly 1)."""
    a, b = pairs[0].span
    toks = [tokenizer.convert_ids_to_tokens(_ids(tokenizer, p.triggered)) for p in pairs]

    def label(rel: int, fallback: str) -> str:
        names = {tokenizer.convert_tokens_to_string([t[rel]]) for t in toks}
        return names.pop() if len(names) == 1 else fallback

    slots = [Slot(label(i, f"prefix[{i}]"), "prefix", [[i] for _ in pairs]) for i in range(a)]
    slots += [Slot(label(i, f"trigger[{i - a}]"), "trigger", [[i] for _ in pairs]) for i in range(a, b)]
    slots.append(Slot("task body", "body", [list(range(b, max(b, p.n_prompt - n_end))) for p in pairs]))
    slots += [Slot(label(-j, f"prompt[-{j}]"), "end", [[p.n_prompt - j] for p in pairs])
              for j in range(n_end, 0, -1)]
    if k > 1:
        slots.append(Slot(f"response[:{k - 1}]", "response",
                          [list(range(p.n_prompt, p.n_prompt + k - 1)) for p in pairs]))
    slots.append(Slot("all positions", "all", [list(range(p.n_prompt + k)) for p in pairs]))
    return slots
