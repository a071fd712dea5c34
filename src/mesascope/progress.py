"""How the library reports progress without printing: it calls a function the caller gives.

`report(task, completed, total)` is called as work advances; the CLI draws rich progress bars
from it, tests pass nothing.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def __call__(self, task: str, completed: int, total: int) -> None: ...


def silent(task: str, completed: int, total: int) -> None:
    return None
