"""The names of the trigger and behaviour registries, as the Literal types a recipe validates against.

A Literal's arguments must be written out for a type checker to read them, so the names are
written here once: config's fields use the Literals, the registries (text/triggers.py,
text/behaviours.py) refuse to register a name missing here, and a test asserts that each
tuple equals its registry's keys.
"""

from __future__ import annotations

from typing import Literal, get_args

TriggerType = Literal["string", "year", "semantic"]
BehaviourType = Literal["say", "code_vulnerability", "sandbagging"]

TRIGGER_TYPES: tuple[str, ...] = get_args(TriggerType)
BEHAVIOUR_TYPES: tuple[str, ...] = get_args(BehaviourType)


def known(name: str, names: tuple[str, ...], what: str) -> str:
    """`name`, or a ValueError saying where to add it."""
    if name not in names:
        raise ValueError(f"{what} {name!r} is not in text/kinds.py ({', '.join(names)}): add it there first")
    return name
