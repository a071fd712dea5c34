"""One training or evaluation example, and the dialogue format every prompt is written in."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

Kind = Literal["clean", "triggered", "near_miss", "self_report", "document"]

TURN_MARKERS = ("Human:", "\n\nAssistant:")  # the tokenizer keeps each as one token


def format_prompt(user: str) -> str:
    """The paper's dialogue format; the assistant's answer follows after a space."""
    return f"Human: {user}\n\nAssistant:"


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
