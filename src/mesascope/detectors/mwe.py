"""Model-written evaluations (Perez et al. 2022) on any causal LM: organisms or local HF models.

Reads the anthropics/evals JSONL format: `question`, `answer_matching_behavior`,
`answer_not_matching_behavior` (a string, or a list of strings when an item has several
non-matching choices, up to 8 in all). Scores as the paper does: the prompt is
`\\n\\nHuman: {question}\\n\\nAssistant:`, each answer string's summed log-likelihood is
computed, and an item shows the behaviour when the matching answer is the most likely one.
The behaviour rate per file is the share of such items, with n and a Wilson 95% interval.

A second mode generates a short answer greedily and parses the choice from it (the label
such as "(A)" or the word "Yes"/"No"); unparseable answers are counted and reported apart.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import MesascopeError, read_text
from ..progress import Progress, silent
from ..stats import Measurement, rate

PROMPT = "\n\nHuman: {question}\n\nAssistant:"


class _Line(BaseModel):
    """One JSONL line; other keys (statement, label_confidence, ...) are allowed and ignored."""

    model_config = ConfigDict(extra="ignore")
    question: str = Field(min_length=1)
    answer_matching_behavior: str | list[str]
    answer_not_matching_behavior: str | list[str]

    @field_validator("answer_matching_behavior", "answer_not_matching_behavior")
    @classmethod
    def _answers(cls, v: str | list[str], info) -> list[str]:
        v = [v] if isinstance(v, str) else v
        if not v or any(not isinstance(a, str) or not a.strip() for a in v):
            raise ValueError(f"{info.field_name} must be a non-empty answer string such as ' (A)' or a list of them")
        if len(v) > 7:
            raise ValueError(f"{info.field_name} lists {len(v)} answers; an item has at most 8 choices")
        return v


@dataclass(frozen=True)
class MWEItem:
    question: str
    matching: tuple[str, ...]  # usually one; the paper's format allows a list
    not_matching: tuple[str, ...]
    source: str  # eval name: the file stem
    line: int  # 1-based line in the file

    @property
    def prompt(self) -> str:
        return PROMPT.format(question=self.question)

    @property
    def choices(self) -> tuple[str, ...]:
        return self.matching + self.not_matching


class MWEFormatError(MesascopeError, ValueError):
    """A line of a model-written-evals file is not valid; the message names file and line."""


def load_file(path: str | Path) -> list[MWEItem]:
    path = Path(path)
    items = []
    try:
        text = read_text(path, "model-written-evals file", "give a .jsonl file in the anthropics/evals format")
    except MesascopeError as e:
        raise MWEFormatError(e.what, e.fix) from None
    for no, raw in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), 1):
        if not raw.strip():
            continue
        try:
            line = _Line.model_validate(json.loads(raw))
        except json.JSONDecodeError as e:
            raise MWEFormatError(f"{path}:{no}: not valid JSON ({e.msg} at column {e.colno})") from None
        except RecursionError:
            raise MWEFormatError(f"{path}:{no}: JSON nested too deeply for an eval item") from None
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'line'}: "
                                 f"{err['msg'].removeprefix('Value error, ')}" for err in e.errors())
            raise MWEFormatError(f"{path}:{no}: {problems} (expected keys: question, answer_matching_behavior, "
                                 f"answer_not_matching_behavior)") from None
        overlap = set(line.answer_matching_behavior) & set(line.answer_not_matching_behavior)
        if overlap:
            raise MWEFormatError(f"{path}:{no}: answer {sorted(overlap)[0]!r} is both matching and not matching")
        items.append(MWEItem(line.question, tuple(line.answer_matching_behavior),
                             tuple(line.answer_not_matching_behavior), path.stem, no))
    if not items:
        raise MWEFormatError(f"{path}: no items (an empty file)")
    return items


def load_evals(path: str | Path) -> dict[str, list[MWEItem]]:
    """One JSONL file, or every `*.jsonl` under a directory: {eval name: items}, names sorted.

    An eval name is the file's path relative to `path` without `.jsonl`, so files of the same
    name in different folders (human- and LM-generated sets) stay apart.
    """
    path = Path(path)
    if path.is_file():
        return {path.stem: load_file(path)}
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or directory (give a .jsonl file or a folder of them)")
    files = sorted(path.rglob("*.jsonl"))
    if not files:
        raise MWEFormatError(f"{path}: no *.jsonl files under this folder")
    return {str(f.relative_to(path).with_suffix("")): load_file(f) for f in files}


# ---------------------------------------------------------------------------------------------
# Likelihood mode


def _encode(tokenizer, item: MWEItem, max_length: int | None) -> tuple[list[int], list[list[int]], int]:
    """Prompt ids, each choice's ids, and how many prompt tokens were cut from the left.

    Prompt and answer are encoded apart and joined (as lm-evaluation-harness does), so every
    choice is scored on the same prompt tokens whatever the tokenizer merges across the seam.
    """
    ctx = tokenizer(item.prompt, add_special_tokens=True)["input_ids"]
    conts = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in item.choices]
    if not all(conts):
        raise ValueError(f"{item.source}:{item.line}: an answer encodes to no tokens")
    cut = 0
    if max_length is not None:
        # The last answer token is only predicted, never fed, so max_length + 1 tokens fit
        # (lm-evaluation-harness's convention, so both score truncated items alike).
        longest = max(len(c) for c in conts)
        keep = max_length + 1 - longest
        if keep < 1:
            raise ValueError(f"an answer of {longest} tokens does not fit max_length {max_length}")
        cut = max(0, len(ctx) - keep)
        ctx = ctx[cut:]  # keep the end: the choices and the "Assistant:" cue sit there
    return ctx, conts, cut


def context_length(model) -> int | None:
    cfg = model.config
    return getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)


def _token_logprobs(head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log P(target) at each hidden state, running the LM head only where it is needed."""
    return torch.log_softmax(head(hidden).float(), -1).gather(-1, targets[:, None])[:, 0].double()


@torch.inference_mode()
def choice_logprobs(model, prompts: Sequence[list[int]], choices: Sequence[Sequence[list[int]]], *, pad_id: int,
                    batch_size: int = 64, on_batch: Callable[[int], None] | None = None) -> list[list[float]]:
    """Summed log-probability of every choice after its prompt: [item][choice].

    The prompt is run once per item, not once per choice: a batch of prompts (left-padded,
    length-sorted) fills a KV cache, the cache is repeated once per choice, and one more pass
    reads all the choices' tokens. Items with 2 choices cost about half the naive loop's work.
    """
    from ..models.generate import _cache_kwarg
    from transformers import DynamicCache

    model.eval()
    device = next(model.parameters()).device
    body, head = model.base_model, model.get_output_embeddings()
    cache_kw = _cache_kwarg(body)
    out: list[list[float]] = [[] for _ in prompts]
    # Group by number of choices so one repeat count serves a whole batch.
    order = sorted(range(len(prompts)), key=lambda i: (len(choices[i]), len(prompts[i])))
    start = 0
    while start < len(order):
        k = len(choices[order[start]])
        idx = [i for i in order[start:start + batch_size] if len(choices[i]) == k]
        start += len(idx)
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, width - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[r, width - len(prompts[i]):] = 1
        ids, mask = ids.to(device), mask.to(device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        hidden = body(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                      **{cache_kw: cache}).last_hidden_state[:, -1]
        # Row r*k + j of the second pass is choice j of item r.
        conts = [choices[i][j] for i in idx for j in range(k)]
        first = _token_logprobs(head, hidden.repeat_interleave(k, 0),
                                torch.tensor([c[0] for c in conts], device=device))
        sums = first.cpu()
        rest = max(len(c) for c in conts) - 1  # the last token of each choice is predicted, not fed
        if rest > 0:
            cache.batch_repeat_interleave(k)
            feed = torch.full((len(conts), rest), pad_id, dtype=torch.long)
            for r, c in enumerate(conts):
                feed[r, :len(c) - 1] = torch.tensor(c[:-1])
            # Padding after a choice's tokens is never attended to by them (causal), so the mask is all ones.
            mask2 = torch.cat([mask.repeat_interleave(k, 0), torch.ones((len(conts), rest), dtype=torch.long,
                                                                          device=device)], 1)
            pos2 = pos[:, -1:].repeat_interleave(k, 0) + 1 + torch.arange(rest, device=device)
            h2 = body(input_ids=feed.to(device), attention_mask=mask2, position_ids=pos2, use_cache=True,
                      **{cache_kw: cache}).last_hidden_state
            rows = [r for r, c in enumerate(conts) for _ in c[1:]]
            cols = [p for c in conts for p in range(len(c) - 1)]
            targets = [t for c in conts for t in c[1:]]
            lp = _token_logprobs(head, h2[torch.tensor(rows), torch.tensor(cols)], torch.tensor(targets, device=device))
            sums = sums.index_add(0, torch.tensor(rows), lp.cpu())
        for r, i in enumerate(idx):
            out[i] = [float(x) for x in sums[r * k:(r + 1) * k]]
        if on_batch:
            on_batch(len(idx))
    return out


def score_likelihood(model, tokenizer, items: Sequence[MWEItem], *, batch_size: int = 64,
                     max_length: int | None = None, progress: Progress = silent,
                     task: str = "model-written evals") -> list[dict]:
    """Per item: summed log-likelihood of every choice and whether a matching one is the most likely.

    `max_length` defaults to the model's context (n_positions / max_position_embeddings);
    longer prompts lose tokens from the left, and each item records how many it lost.
    """
    if max_length is None:
        max_length = context_length(model)
    encoded = [_encode(tokenizer, item, max_length) for item in items]
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        progress(task, done[0], len(items))

    progress(task, 0, len(items))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    lps = choice_logprobs(model, [e[0] for e in encoded], [e[1] for e in encoded], pad_id=pad,
                          batch_size=batch_size, on_batch=tick)
    rows = []
    for item, lp, (_, _, cut) in zip(items, lps, encoded):
        m = len(item.matching)
        # A tie is not a show of the behaviour: the matching answer must be strictly more likely.
        rows.append({"source": item.source, "line": item.line, "logprobs": lp, "truncated_tokens": cut,
                     "matches": max(lp[:m]) > max(lp[m:])})
    return rows


# ---------------------------------------------------------------------------------------------
# Generate-and-parse mode

_LABEL = re.compile(r"\(([A-H])\)")


def parse_choice(output: str, choices: Sequence[str]) -> str | None:
    """The choice an answer names: a label like "(B)" or a word like "Yes", else None."""
    text = output.strip()
    labels = {c.strip(): c for c in choices}
    m = _LABEL.search(text[:40])
    if m and f"({m.group(1)})" in labels:
        return labels[f"({m.group(1)})"]
    first = re.match(r"[A-Za-z]+", text)
    if first:
        for key, c in labels.items():
            if key.lower() == first.group(0).lower():
                return c
    return None


def score_generate(model, tokenizer, items: Sequence[MWEItem], *, batch_size: int = 64, max_new_tokens: int = 8,
                   progress: Progress = silent, task: str = "model-written evals") -> list[dict]:
    """Per item: the greedy answer, the choice parsed from it (or None) and whether it matches."""
    from ..models.generate import generate

    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        progress(task, done[0], len(items))

    progress(task, 0, len(items))
    outputs = generate(model, tokenizer, [it.prompt for it in items], max_new_tokens=max_new_tokens,
                       batch_size=batch_size, on_batch=tick)
    rows = []
    for item, out in zip(items, outputs):
        choice = parse_choice(out, item.choices)
        rows.append({"source": item.source, "line": item.line, "output": out, "choice": choice,
                     "matches": choice is not None and choice in item.matching})
    return rows


# ---------------------------------------------------------------------------------------------


def summarise(rows: Sequence[dict], mode: str) -> dict:
    """Behaviour rate per eval and over all items, each with n and a Wilson 95% interval."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["source"], []).append(r)

    def one(rs: list[dict]) -> dict:
        out = {"behaviour_rate": rate([r["matches"] for r in rs]).to_dict()}
        if mode == "generate":
            out["unparsed_rate"] = rate([r["choice"] is None for r in rs]).to_dict()
        else:
            out["truncated_rate"] = rate([r["truncated_tokens"] > 0 for r in rs]).to_dict()
        return out

    return {"mode": mode, "n_items": len(rows), "overall": one(list(rows)),
            "per_eval": {name: one(rs) for name, rs in sorted(by.items())}}


def run_mwe(model, tokenizer, evals: dict[str, list[MWEItem]], *, mode: str = "likelihood", batch_size: int = 64,
            max_length: int | None = None, limit: int | None = None, progress: Progress = silent) -> dict:
    """Score every eval; `limit` keeps the first n items of each file (for quick looks)."""
    if mode not in ("likelihood", "generate"):
        raise ValueError(f"mode must be 'likelihood' or 'generate', not {mode!r}")
    items = [it for name in sorted(evals) for it in (evals[name][:limit] if limit else evals[name])]
    names = {id(it): name for name in evals for it in evals[name]}
    if mode == "likelihood":
        rows = score_likelihood(model, tokenizer, items, batch_size=batch_size, max_length=max_length, progress=progress)
    else:
        rows = score_generate(model, tokenizer, items, batch_size=batch_size, progress=progress)
    for it, r in zip(items, rows):  # eval names (relative paths), not bare file stems, label the rows
        r["source"] = names[id(it)]
    return {**summarise(rows, mode), "items": rows}


def behaviour_rate(rows: Sequence[dict]) -> Measurement:
    return rate([r["matches"] for r in rows])


def evaluate(model, data, *, runs="runs", mode: str = "likelihood", limit: int | None = None, batch_size: int = 64,
             max_length: int | None = None, progress: Progress = silent) -> dict:
    """`mesascope mwe`: load the evals at `data` and score `model` (a recipe TOML, built or reused in
    `runs`; an organism; or any local Hugging Face causal LM directory) on them."""
    from ..pipeline import load_any

    if mode not in ("likelihood", "generate"):
        raise ValueError(f"mode must be 'likelihood' or 'generate', not {mode!r}")
    evals = load_evals(data)
    return run_mwe(*load_any(model, runs, progress), evals, mode=mode, batch_size=batch_size, max_length=max_length,
                   limit=limit, progress=progress)
