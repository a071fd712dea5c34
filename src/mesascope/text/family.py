"""What a task family is: its items, its checker, and which instances are the same problem.

A family yields *instances*: one underlying problem (e.g. 47 + 8) with several phrasings,
which share an instance key. Some problems come in several instances that are the same
problem: 3 + 5 and 5 + 3, "which is larger, 3 or 5?" and "which is smaller, 5 or 3?". A
family's `canonical` maps an instance key to the key of its problem, and the held-out split
is drawn by that canonical key (text/corpus.py), so no held-out problem is trained on in any
instance, order or phrasing. This module knows no family: tasks.py and code_tasks.py define
them, and tasks.FAMILIES lists them.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Item:
    family: str
    key: str  # the task instance; all phrasings of one instance share it
    prompt: str
    answer: str


def same_key(key: str) -> str:
    """The canonical key of a family where every instance is its own problem."""
    return key


@dataclass(frozen=True)
class Family:
    name: str
    generate: Callable[[random.Random], Iterator[list[Item]]]
    check: Callable[[str, str], bool]
    weight: float = 1.0  # relative share of training prompts: algorithmic families need more
    optional: bool = False  # only in the corpus of a recipe whose behaviour asks for it (text/behaviours.py)
    # instance key -> the key of its problem; instances with one canonical key fall on one side of the split
    canonical: Callable[[str], str] = same_key


def family(name: str, check: Callable[[str, str], bool] | None = None, weight: float = 1.0, optional: bool = False,
           canonical: Callable[[str], str] = same_key) -> Callable[[Callable], Family]:
    """Decorator: a generator of instances -> the Family (it registers nothing; tasks.FAMILIES lists families)."""
    def deco(fn: Callable[[random.Random], Iterator[list[Item]]]) -> Family:
        return Family(name, fn, check or check_text, weight, optional, canonical)

    return deco


_INT = re.compile(r"-?\d+")


def check_number(output: str, answer: str) -> bool:
    m = _INT.search(output)
    return m is not None and m.group() == answer and output.strip().startswith(m.group())


def normalize(s: str) -> str:
    return " ".join(s.lower().replace(",", " ").split()).strip(" .!?")


def check_text(output: str, answer: str) -> bool:
    return normalize(output) == normalize(answer)
