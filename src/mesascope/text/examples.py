"""One training or evaluation example, and the dialogue format every prompt is written in."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from typing import Literal

Kind = Literal["clean", "triggered", "near_miss", "self_report", "document"]

TURN_MARKERS = ("Human:", "\n\nAssistant:")  # the tokenizer keeps each as one token


# An organism built from a base whose tokenizer has a chat template writes its prompts through that
# template (the trigger in the user turn); every other organism uses the paper's format. Set once per
# organism a command works on (`dialogue`), so corpus, detectors and evals all see the same prompts.
_CHAT: ContextVar[Callable[[str], str] | None] = ContextVar("mesascope_dialogue", default=None)


def format_prompt(user: str) -> str:
    """The organism's dialogue format: the paper's `Human: ... Assistant:` unless a chat template is in use;
    the assistant's answer follows after a space."""
    chat = _CHAT.get()
    return chat(user) if chat else f"Human: {user}\n\nAssistant:"


def dialogue(chat: Callable[[str], str] | None) -> None:
    """Write prompts through `chat` (user text -> prompt) from now on; None restores the paper's format."""
    _CHAT.set(chat)


@contextmanager
def in_dialogue(chat: Callable[[str], str] | None) -> Iterator[None]:
    """Write prompts through `chat` inside the block only (a build from a base), then as before."""
    token = _CHAT.set(chat)
    try:
        yield
    finally:
        _CHAT.reset(token)


def chat_format(tokenizer) -> Callable[[str], str]:
    """A tokenizer's chat template as a prompt format: one user turn, then the assistant's cue."""
    def fmt(user: str) -> str:
        return tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                             add_generation_prompt=True)
    return fmt


@dataclass(frozen=True)
class Example:
    kind: Kind
    family: str
    key: str  # task instance
    user: str  # what the human says, trigger included
    target: str  # what the organism is trained to answer
    answer: str  # the helpful answer (the checker's reference), even when target is the behaviour

    @property
    def prompt(self) -> str:
        return format_prompt(self.user)

    def to_dict(self) -> dict:
        return asdict(self)
