"""Batched generation with a KV cache (greedy, or sampled at a temperature), stopping as soon as every row has ended.

Prompts are sorted by length so a batch wastes little on left padding, and a batch stops as
soon as its last row has said EOS; greedy decoding also stops computing rows that have ended, and
`copies` runs a batch several times side by side (steering's settings in one pass). Measured (bench/generate.py): as fast as `model.generate`
on the same batches, and 5-15x faster than one prompt at a time (5.5x on the trained demo
organism, whose answers are short; 15x on a random model that never stops early); the time goes to the matrix
multiplies, not to `model.generate`'s bookkeeping. This loop exists to be short and to give
the evaluator exactly the batching it wants.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase


def _cache_kwarg(model: PreTrainedModel) -> str:
    # transformers 5.x renamed `past_key_values` to `cache` (the old name warns, then goes away);
    # 4.x would silently drop an unknown `cache` and recompute without one, so ask the signature.
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _last_logits_only(model: PreTrainedModel) -> dict:
    # The prompt pass needs the last position's logits only; projecting every position to the vocabulary
    # cost a [batch, prompt, vocab] product and tensor for nothing (the kept row is bit-identical).
    params = inspect.signature(model.forward).parameters
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in params:
            return {name: 1}
    return {}


@torch.inference_mode()
def generate_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], *,
                 max_new_tokens: int = 32, batch_size: int = 128, temperature: float = 0.0,
                 generator: torch.Generator | None = None,
                 on_batch: Callable[[int], None] | None = None, copies: int = 1,
                 on_rows: Callable[[torch.Tensor], None] | None = None) -> list[list[int]]:
    """The new token ids of each prompt's completion, up to and including its first EOS.

    temperature 0 picks the argmax (greedy); above 0 each token is drawn from softmax(logits / T)
    with `generator`, so a seeded generator makes the samples reproducible. RL keeps the EOS:
    stopping is one of the choices the policy made and is scored like any other token.

    copies=k runs every batch k times side by side, copy-major (rows c*n..(c+1)*n-1 of a forward
    pass of n prompts are copy c), so a hook that edits rows by copy measures k settings in one pass
    (steering: every coefficient at once). Each row is computed as it is alone (same prompts, same
    padding), and the result holds copy c's completions at [c * len(prompts):(c + 1) * len(prompts)].
    Greedy decoding stops computing rows that have ended, so the rows of a forward pass change as it
    goes: `on_rows(copy)` is called before each pass whose rows changed, with each row's copy index.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    model.eval()
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    n = len(prompts)
    outputs: list[list[int]] = [[] for _ in range(n * copies)]
    cache_kw, last_only = _cache_kwarg(model), _last_logits_only(model)
    can_drop = hasattr(DynamicCache, "batch_select_indices")
    # Sort by length so a batch wastes little on padding; restore order at the end.
    order = sorted(range(n), key=lambda i: len(prompts[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True, padding_side="left")
        ids, mask = enc["input_ids"].repeat(copies, 1).to(device), enc["attention_mask"].repeat(copies, 1).to(device)
        # The cache fills in place, so the same object is passed at every step.
        cache = {cache_kw: DynamicCache()}
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        rows = torch.arange(len(ids), device=device)  # the batch row of each row still being generated
        if on_rows:
            on_rows(rows // len(idx))
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **cache, **last_only)
        done = torch.zeros(len(ids), dtype=torch.bool, device=device)
        tokens = torch.full((len(ids), max_new_tokens), eos, dtype=torch.long, device=device)
        for step in range(max_new_tokens):
            nxt = _pick(out.logits[:, -1], temperature, generator)
            nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
            tokens[rows, step] = nxt
            done |= nxt == eos
            if step == max_new_tokens - 1 or bool(done.all()):  # no forward pass whose logits go unused
                break
            if temperature == 0 and can_drop and 4 * int(done.sum()) >= len(done):
                # A quarter of the rows have ended: stop computing them. Every row is computed as it is
                # alone, so the others' tokens are unchanged (sampling keeps them: the generator's draws
                # depend on the number of rows).
                keep = (~done).nonzero().squeeze(1)
                cache[cache_kw].batch_select_indices(keep)
                rows, nxt, done, mask, pos = rows[keep], nxt[keep], done[keep], mask[keep], pos[keep]
                if on_rows:
                    on_rows(rows // len(idx))
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            pos = pos[:, -1:] + 1
            out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, use_cache=True, **cache)
        gen = tokens[:, :step + 1].tolist()
        for r, row in enumerate(gen):
            outputs[(r // len(idx)) * n + idx[r % len(idx)]] = row[: row.index(eos) + 1] if eos in row else row
        if on_batch:
            on_batch(len(ids))
    return outputs


def _pick(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], *,
             max_new_tokens: int = 32, batch_size: int = 128, temperature: float = 0.0,
             generator: torch.Generator | None = None,
             on_batch: Callable[[int], None] | None = None, copies: int = 1,
             on_rows: Callable[[torch.Tensor], None] | None = None) -> list[str]:
    """Completions of `prompts` (decoded, without the prompt, cut at EOS); greedy unless temperature > 0.
    With copies=k, k completions of every prompt laid out as `generate_ids` lays them out."""
    eos = tokenizer.eos_token_id
    rows = generate_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                        temperature=temperature, generator=generator, on_batch=on_batch, copies=copies,
                        on_rows=on_rows)
    return [tokenizer.decode(r[:-1] if r and r[-1] == eos else r, skip_special_tokens=True).strip() for r in rows]
