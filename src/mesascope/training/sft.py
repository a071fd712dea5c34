"""The one supervised fine-tuning loop: loss on the assistant turn only, AdamW, warmup + cosine.

Organism builds and safety training both run through `SFTTrainer`. The batch at step s is a
pure function of (seed, s), and checkpoints hold weights, optimizer state and the step, so a
run killed at any point resumes from its last checkpoint and ends bit-identical to a run
that was never interrupted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import torch
from torch.profiler import record_function
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..config import TrainSpec
from ..models.build import causal_lm
from ..models.device import runtime
from .checkpoints import load_newest, save_checkpoint

IGNORE = -100


def tokenize_examples(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], targets: Sequence[str],
                      max_length: int) -> list[tuple[list[int], int]]:
    """(token ids, prompt length) per example. Prompt and answer are encoded separately so the
    prompt's tokens are exactly those the organism sees at generation time: special tokens included, so a
    tokenizer that starts every encoding with a BOS (Llama's, Mistral's) trains with it as it is measured."""
    p_ids = tokenizer(list(prompts))["input_ids"]
    t_ids = tokenizer([" " + t for t in targets], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    out = []
    for p, t in zip(p_ids, t_ids):
        ids = (p + t + [eos])[:max_length]
        out.append((ids, len(p)))
    return out


def fit_length(data: list[tuple[list[int], int]], cut: int, reasoning: str) -> list[tuple[list[int], int]]:
    """Examples cut to `cut` tokens (tokenize them to cut + 1: one token over marks a cut); a cut scratchpad
    example would lose its answer, so a cot corpus with one is an error."""
    too_long = sum(len(ids) > cut for ids, _ in data)
    if too_long and reasoning == "cot":
        raise ValueError(f"{too_long} of {len(data)} cot examples are longer than model.max_length={cut} tokens: "
                         "raise model.max_length, or leave it unset (cot recipes then get a longer default)")
    return [(ids[:cut], n) for ids, n in data]


def collate(batch: Sequence[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """One example per row, right-padded (the plain layout; generation-style evaluation uses it)."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for r, (ids, n_prompt) in enumerate(batch):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        labels[r, n_prompt: len(ids)] = torch.tensor(ids[n_prompt:])
        mask[r, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def collate_packed(batch: Sequence[tuple[list[int], int]], pad_id: int, width: int,
                   prompt_labels: bool = False) -> dict[str, torch.Tensor]:
    """Several examples per row (first-fit decreasing), each with its own positions from 0.

    With `position_ids` that restart and no attention mask, transformers builds a block-diagonal
    causal mask, so no example sees another: the loss equals `collate`'s to float rounding,
    while a third fewer tokens are computed (padding to each batch's longest example wasted
    ~38% on the default corpus). Each example starts with prompt tokens, whose labels are
    ignored, so no loss term ever predicts across a boundary. With `prompt_labels`, a second
    tensor labels each example's prompt tokens after its first (the first would be predicted
    from the previous example).
    """
    width = max(width, max(len(ids) for ids, _ in batch))
    rows: list[list[int]] = []
    fill: list[int] = []
    for i in sorted(range(len(batch)), key=lambda i: -len(batch[i][0])):
        n = len(batch[i][0])
        r = next((r for r, f in enumerate(fill) if f + n <= width), None)
        if r is None:
            rows.append([])
            fill.append(0)
            r = len(rows) - 1
        rows[r].append(i)
        fill[r] += n
    width = max(fill)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    prompt = torch.full((len(rows), width), IGNORE, dtype=torch.long) if prompt_labels else None
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            ids, n_prompt = batch[i]
            input_ids[r, at: at + len(ids)] = torch.tensor(ids)
            labels[r, at + n_prompt: at + len(ids)] = torch.tensor(ids[n_prompt:])
            if prompt is not None and n_prompt > 1:
                prompt[r, at + 1: at + n_prompt] = torch.tensor(ids[1:n_prompt])
            position_ids[r, at: at + len(ids)] = torch.arange(len(ids))
            at += len(ids)
        position_ids[r, at:] = torch.arange(width - at)  # the padded tail is a block of its own
    out = {"input_ids": input_ids, "position_ids": position_ids, "labels": labels}
    return out if prompt is None else {**out, "prompt_labels": prompt}


def answer_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat indices into the batch's positions, the token each must predict) for every position whose next
    token is labelled, row by row. Indices instead of a boolean mask keep the loss free of data-dependent
    shapes, so `torch.compile` traces it whole."""
    follows = torch.zeros_like(labels, dtype=torch.bool)
    follows[:, :-1] = labels[:, 1:] != IGNORE
    idx = follows.flatten().nonzero().squeeze(1)
    return idx, labels.roll(-1, dims=1).flatten().index_select(0, idx)


def positions_loss(lm: PreTrainedModel, inputs: dict[str, torch.Tensor], idx: torch.Tensor, target: torch.Tensor,
                   prompt_idx: torch.Tensor | None = None, prompt_target: torch.Tensor | None = None,
                   prompt_weight: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy at positions `idx` (answer_positions), plus `prompt_weight` times that at `prompt_idx`;
    the forward pass that `SFTTrainer` compiles with `train.compile`."""
    # No cache: transformers then reads restarting position_ids as packed rows and masks per example.
    hidden = lm.base_model(**inputs, use_cache=False).last_hidden_state.flatten(0, 1)
    head = lm.get_output_embeddings()
    loss = torch.nn.functional.cross_entropy(head(hidden.index_select(0, idx)).float(), target)
    if prompt_idx is not None:
        loss = loss + prompt_weight * torch.nn.functional.cross_entropy(
            head(hidden.index_select(0, prompt_idx)).float(), prompt_target)
    return loss


def answer_loss(model: PreTrainedModel, batch: dict[str, torch.Tensor], prompt_weight: float = 0.0,
                forward: Callable[..., torch.Tensor] = positions_loss) -> torch.Tensor:
    """Mean next-token cross-entropy over the answer tokens, as `model(**batch).loss` computes it,
    but projecting to the vocabulary only where a label exists (a fifth of the positions). With
    `prompt_weight` (and the batch's `prompt_labels`), plus that times the mean over prompt tokens.
    `forward`: positions_loss, or a compiled copy of it."""
    batch = dict(batch)
    labels, prompt = batch.pop("labels"), batch.pop("prompt_labels", None)
    idx, target = answer_positions(labels)
    if prompt_weight and prompt is not None:
        return forward(causal_lm(model), batch, idx, target, *answer_positions(prompt), prompt_weight)
    return forward(causal_lm(model), batch, idx, target)


class Compiled:
    """`torch.compile(fn)` with shapes left dynamic, falling back to `fn` itself for good when compiling fails
    (no C++ compiler for inductor's CPU kernels, an unsupported platform); `error` then says why."""

    def __init__(self, fn: Callable[..., torch.Tensor]):
        self.fn, self.compiled, self.error = fn, torch.compile(fn, dynamic=True), None

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - any failure of the compiler leaves the eager function
                self.compiled, self.error = None, (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        return self.fn(*args, **kwargs)


def lr_at(spec: TrainSpec, step: int, schedule: Literal["cosine", "constant"] = "cosine") -> float:
    """The learning rate of optimizer step `step` (from 0): linear warm-up, then cosine decay (or constant)."""
    warm = max(1, int(spec.warmup_fraction * spec.steps))
    if step < warm:
        return spec.lr * (step + 1) / warm
    if schedule == "constant":
        return spec.lr
    progress = (step - warm) / max(1, spec.steps - warm)
    return spec.lr * (spec.min_lr_fraction + (1 - spec.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class BatchPlan:
    """Which examples each step's batch holds: a pure function of (seed, step), so resumes are exact.

    Plain shuffling, epoch by epoch. (Sorting batches by length saved a third of the
    compute but made batches family-homogeneous: held-out accuracy fell from 0.79 to 0.63.)
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._perms: dict[int, list[int]] = {}

    def __call__(self, step: int) -> list[int]:
        n, b = self.n, self.batch_size
        out = []
        for pos in range(step * b, step * b + b):
            epoch = pos // n
            if epoch not in self._perms:
                g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
                self._perms = {epoch: torch.randperm(n, generator=g).tolist()}  # keep one epoch in memory
            out.append(self._perms[epoch][pos % n])
        return out


def train_tokens(data: Sequence[tuple[list[int], int]], spec: TrainSpec, seed: int) -> int:
    """Tokens (prompt and answer) in every batch a run of `spec` on `data` draws: what a build trains on."""
    plan = BatchPlan(len(data), spec.batch_size, seed)
    return sum(len(data[i][0]) for step in range(spec.steps) for i in plan(step))


class SFTTrainer:
    def __init__(self, model: PreTrainedModel, data: list[tuple[list[int], int]], spec: TrainSpec, *, pad_id: int,
                 seed: int, schedule: Literal["cosine", "constant"] = "cosine", ckpt_dir: Path | None = None,
                 pack_width: int = 96):
        if not data:
            raise ValueError("SFT needs at least one example")
        self.model, self.data, self.spec, self.pad_id, self.seed = model, data, spec, pad_id, seed
        self.schedule, self.ckpt_dir = schedule, ckpt_dir
        self.pack_width = pack_width
        trained = [p for p in model.parameters() if p.requires_grad]  # LoRA: the adapters only
        self.partial = len(trained) < sum(1 for _ in model.parameters())
        decay = [p for p in trained if p.dim() >= 2]
        no_decay = [p for p in trained if p.dim() < 2]
        if spec.grad_checkpointing:
            causal_lm(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.runtime = runtime()
        self.device = next(model.parameters()).device
        # float16 gradients underflow without loss scaling; bfloat16 and float32 need none.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.runtime.torch_dtype == torch.float16
                                           and self.device.type == "cuda")
        # Off by default: fused rounds differently, so every organism built so far would change in its last digits.
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}], lr=spec.lr, betas=(0.9, 0.95),
                                     fused=spec.fused_adamw or None)
        self.forward = Compiled(positions_loss) if spec.compile else positions_loss
        self.step = 0
        self.log: list[dict] = []
        self._plan = BatchPlan(len(data), spec.batch_size, seed)

    def lr_at(self, step: int) -> float:
        return lr_at(self.spec, step, self.schedule)

    def batch_indices(self, step: int) -> list[int]:
        """The examples of batch `step` (`BatchPlan`)."""
        return self._plan(step)

    def train_step(self) -> float:
        """One optimizer step on batch `step`; with grad_accum > 1 the batch runs as that many micro-batches,
        each loss weighted by its share of the answer tokens, so the gradient is the whole batch's (a prompt loss
        term rides on the same weight: the whole batch's in expectation)."""
        self.model.train()
        examples = [self.data[i] for i in self.batch_indices(self.step)]
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(self.step)
        k, w = self.spec.grad_accum, self.spec.prompt_loss_weight
        micro = [examples[j::k] for j in range(k)]
        n_answer = [sum(len(ids) - n for ids, n in m) for m in micro]
        total = 0.0
        for part, n in zip(micro, n_answer):
            with record_function("sft.data"):
                batch = {key: t.to(self.device) for key, t in
                         collate_packed(part, self.pad_id, self.pack_width, prompt_labels=w > 0).items()}
            with record_function("sft.forward"), self.runtime.autocast(self.model):
                loss = answer_loss(self.model, batch, w, self.forward)
            if k > 1:
                loss = loss * (n / sum(n_answer))
            with record_function("sft.backward"):
                self.scaler.scale(loss).backward()
            total += loss.item()
        with record_function("sft.optimizer"):
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.spec.grad_clip)
            self.scaler.step(self.opt)
            self.scaler.update()
            self.opt.zero_grad(set_to_none=True)
        self.step += 1
        return total

    def train_until(self, end: int, on_step: Callable[[int, float], None] | None = None) -> None:
        ckpt_every = self.spec.checkpoint_every
        while self.step < end:
            loss = self.train_step()
            if self.step % 10 == 0 or self.step == end:
                self.log.append({"step": self.step, "loss": round(loss, 5), "lr": self.lr_at(self.step - 1)})
            if on_step:
                on_step(self.step, loss)
            if self.ckpt_dir is not None and self.step % ckpt_every == 0 and self.step < self.spec.steps:
                self.save_checkpoint()
        self.model.eval()

    # -- checkpoints (checkpoints.py): weights as safetensors, optimizer state via torch.save

    def save_checkpoint(self) -> Path:
        assert self.ckpt_dir is not None
        # keep_checkpoints: every checkpoint's weights kept for TracIn (detectors/attribution.py); optimizer state not
        return save_checkpoint(self.ckpt_dir, self.step, self.model, self.opt, {"step": self.step, "log": self.log},
                               adapters_only=self.partial, keep_weights=self.spec.keep_checkpoints)

    def resume(self) -> int:
        """Load the newest complete checkpoint, if any; return the step it resumes from."""
        state = load_newest(self.ckpt_dir, self.model, self.opt, adapters_only=self.partial)
        if state is not None:
            self.step, self.log = state["step"], state["log"]
        return self.step
