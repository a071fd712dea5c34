"""The `mesascope` model provider for Inspect: organisms and local HF causal LMs as Inspect models.

`--model mesascope/<dir>` serves the model in `<dir>` (an organism directory, or any local
Hugging Face causal LM directory; nothing is downloaded). Chat messages become the organism's
dialogue format (`Human: ...\\n\\nAssistant:`), so a one-message sample sees exactly the prompt
mesascope's own evaluator gives it. Generation is greedy, like every mesascope measurement.

Inspect calls `generate` once per sample, concurrently. Each call queues its prompt and waits
for the model in a worker thread; whichever call gets the model next generates every queued
prompt in one batch. So calls are batched across samples, and the model is only ever used by
one thread at a time (generation and activation capture both hook into it).

Model args (`-M name=value`):
- `probe=<dir>`: a probe saved by `mesascope.detectors.linear.save_probe`; every output's
  metadata then holds `probe_scores` {hook: score} at the prompt's last token.
- `batch_size` (default 64): the most prompts generated together.
- `device` (default: cuda if available, else cpu).
- `chat_template` (default: auto): for a non-organism model, use its tokenizer's chat template
  if it has one; false: always use the dialogue format.
"""

from __future__ import annotations

import json

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import torch
from inspect_ai.model import (ChatCompletionChoice, ChatMessage, ChatMessageAssistant, GenerateConfig, ModelAPI,
                              ModelCall, ModelOutput, ModelUsage)
from inspect_ai.tool import ToolChoice, ToolInfo
from pydantic import BaseModel, ConfigDict, Field

from ...models.activations import capture_last_token
from ..linear import load_probe
from ...models import generate, load_model
from ...text.corpus import format_prompt

DEFAULT_MAX_TOKENS = 32  # mesascope's answer budget (evals.backdoor.measure_backdoor)
GATHER_SECONDS = 0.005  # a first call waits this long so samples started together share its batch


class ProviderArgs(BaseModel):
    """The provider's model args; an unknown or mistyped one fails with its name."""

    model_config = ConfigDict(extra="forbid")
    probe: str | None = Field(None, description="directory written by interp.probe_io.save_probe")
    batch_size: int = Field(64, ge=1)
    device: str | None = None
    chat_template: bool | None = None


def format_chat(messages: list[ChatMessage]) -> str:
    """Messages in the organism's dialogue format; system text goes first, before the first turn.

    One user message gives exactly `format_prompt(user)`. Tool results are shown as human turns
    (these models cannot call tools). A final assistant message is continued, not closed.
    """
    system = [m.text for m in messages if m.role == "system"]
    turns = [m for m in messages if m.role != "system"]
    if not turns:
        raise ValueError("the input has no user message: give the model something to answer")
    text = "\n\n".join(system) + "\n\n" if system else ""
    for k, m in enumerate(turns):
        if m.role == "assistant":
            text += " " + m.text.strip() + ("" if k == len(turns) - 1 else "\n\n")
        else:
            text += format_prompt(m.text)
    return text


@dataclass
class _Request:
    prompt: str
    max_new_tokens: int
    done: bool = False
    completion: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    probe_scores: dict[str, float] | None = None
    batch_size: int = 0
    error: BaseException | None = None
    seconds: float = 0.0


class MesascopeAPI(ModelAPI):
    def __init__(self, model_name: str, base_url: str | None = None, api_key: str | None = None,
                 config: GenerateConfig = GenerateConfig(), **model_args: Any) -> None:
        super().__init__(model_name=model_name, base_url=base_url, api_key=api_key, config=config)
        self.args = ProviderArgs(**model_args)
        path = Path(model_name).expanduser()
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"mesascope/{model_name}: {path} is not a model directory (no config.json); "
                                    "give an organism directory or a local Hugging Face model directory, "
                                    "e.g. --model mesascope//abs/path/organism (the path follows 'mesascope/')")
        self.is_organism = (path / "recipe.json").exists()
        self.model, self.tokenizer = load_model(path)
        device = self.args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(device)
        # An organism speaks the format it was trained in: the paper's, unless it was built from a chat base.
        trained_chat = self.is_organism and json.loads((path / "organism.json").read_text(encoding="utf-8")
                                                       if (path / "organism.json").exists() else "{}"
                                                       ).get("prompt_format") == "chat"
        self.use_template = ((not self.is_organism or trained_chat) and self.args.chat_template is not False
                             and bool(getattr(self.tokenizer, "chat_template", None)))
        if self.args.chat_template and not self.use_template:
            raise ValueError("chat_template=true but this model has no chat template to use"
                             + (" (an organism speaks the dialogue format)" if self.is_organism else ""))
        self.probe = load_probe(self.args.probe) if self.args.probe else None
        if self.probe is not None and self.probe.d_model != self.model.config.hidden_size:
            raise ValueError(f"probe={self.args.probe} reads d_model={self.probe.d_model} but the model's hidden size "
                             f"is {self.model.config.hidden_size}: use a probe fitted on a model of this width")
        self._model_lock = threading.Lock()  # one batch on the model at a time
        self._queue_lock = threading.Lock()
        self._queue: list[_Request] = []

    # ---- what Inspect asks of a provider -------------------------------------------------

    async def generate(self, input: list[ChatMessage], tools: list[ToolInfo], tool_choice: ToolChoice,
                       config: GenerateConfig) -> tuple[ModelOutput, ModelCall]:
        req = _Request(self.prompt(input), config.max_tokens or DEFAULT_MAX_TOKENS)
        with self._queue_lock:
            self._queue.append(req)
        await anyio.sleep(GATHER_SECONDS)
        await anyio.to_thread.run_sync(self._serve, req)
        if req.error is not None:
            raise req.error
        completion = _cut_at_stop(req.completion, config.stop_seqs)
        stopped = completion != req.completion or req.output_tokens < req.max_new_tokens
        output = ModelOutput(
            model=self.model_name,
            choices=[ChatCompletionChoice(
                message=ChatMessageAssistant(content=completion, model=self.model_name, source="generate"),
                stop_reason="stop" if stopped else "max_tokens")],
            usage=ModelUsage(input_tokens=req.input_tokens, output_tokens=req.output_tokens,
                             total_tokens=req.input_tokens + req.output_tokens),
            time=req.seconds,
            metadata={"probe_scores": req.probe_scores} if req.probe_scores is not None else None,
        )
        call = ModelCall.create(request={"prompt": req.prompt, "max_new_tokens": req.max_new_tokens,
                                         "decoding": "greedy", "batch_size": req.batch_size},
                                response={"completion": req.completion}, time=req.seconds)
        return output, call

    def prompt(self, messages: list[ChatMessage]) -> str:
        """The text the model is given for `messages`."""
        if not self.use_template:
            return format_chat(messages)
        chat = [{"role": m.role if m.role in ("system", "assistant") else "user", "content": m.text} for m in messages]
        text = self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        bos = self.tokenizer.bos_token
        # The tokenizer adds its BOS again when it encodes the prompt: keep only that one.
        return text[len(bos):] if bos and text.startswith(bos) else text

    def max_tokens(self) -> int | None:
        return DEFAULT_MAX_TOKENS

    def max_connections(self) -> int:
        return self.args.batch_size  # concurrent calls beyond a batch would only wait for the next one

    def collapse_user_messages(self) -> bool:
        return True

    def collapse_assistant_messages(self) -> bool:
        return True

    async def count_text_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    async def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def close(self) -> None:
        self.model = None

    # ---- batching ---------------------------------------------------------------------------

    def _serve(self, req: _Request) -> None:
        """In a worker thread: wait for the model, then generate every queued prompt (req's included)."""
        with self._model_lock:
            if req.done:  # an earlier batch took it
                return
            with self._queue_lock:
                others = [r for r in self._queue if r is not req][: self.args.batch_size - 1]
                batch = [req, *others]
                self._queue = [r for r in self._queue if r not in batch]
            try:
                self._run(batch)
            except Exception as e:  # every caller of the batch sees the failure
                for r in batch:
                    r.error = e
            for r in batch:
                r.done = True

    def _run(self, batch: list[_Request]) -> None:
        t0 = time.perf_counter()
        by_budget: dict[int, list[_Request]] = {}
        for r in batch:
            by_budget.setdefault(r.max_new_tokens, []).append(r)
        for budget, group in by_budget.items():
            outs = generate(self.model, self.tokenizer, [r.prompt for r in group], max_new_tokens=budget,
                            batch_size=len(group))
            for r, o in zip(group, outs):
                r.completion = o
        if self.probe is not None:
            acts = capture_last_token(self.model, self.tokenizer, [r.prompt for r in batch], batch_size=len(batch),
                                      layers=self.probe.layers)
            scores = self.probe.score(acts)  # [n_hooks, n]
            for k, r in enumerate(batch):
                r.probe_scores = {hook: float(scores[i, k]) for i, hook in enumerate(self.probe.hooks)}
        seconds = time.perf_counter() - t0
        for r in batch:
            r.input_tokens = len(self.tokenizer(r.prompt)["input_ids"])
            # The generator returns text, so output tokens are estimated by re-encoding it: exact for
            # an answer that ended at EOS, but the stripped text of a cut-off one can re-encode longer.
            n_out = len(self.tokenizer(r.completion, add_special_tokens=False)["input_ids"])
            r.output_tokens = min(n_out, r.max_new_tokens)
            r.batch_size, r.seconds = len(batch), seconds


def _cut_at_stop(text: str, stop_seqs: list[str] | None) -> str:
    cuts = [text.find(s) for s in stop_seqs or [] if s and s in text]
    return text[: min(cuts)] if cuts else text
