"""Inspect AI bridge (`pip install mesascope[inspect]`): the `mesascope/<dir>` model provider and
the `mesascope/backdoor` and `mesascope/mwe` tasks."""

try:
    import inspect_ai  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("mesascope's Inspect bridge needs inspect-ai: pip install 'mesascope[inspect]'") from e

from .tasks import backdoor, backdoor_scorer, measurements, mwe, mwe_scorer

__all__ = ["backdoor", "backdoor_scorer", "measurements", "mwe", "mwe_scorer"]
