"""One error type for every expected problem: what went wrong and how to fix it.

A bad input file, a folder that cannot be written, a full disk: these are the user's to fix,
and the CLI prints them as one line, `error: <what> (<fix>)`, exiting 2 (`mesascope/__main__.py`).
Anything else is a bug: one line and the path of the saved traceback.

Loaders raise `MesascopeError` (or one of its subclasses: ResultsError, MWEFormatError,
AlpacaFormatError, ...). Errors the library does not raise itself (pydantic's ValidationError,
a UnicodeDecodeError, an OSError from a write) are converted by `expected`, so the boundary
needs no list of them. This module imports nothing else from mesascope, and never prints.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError


class MesascopeError(Exception):
    """An expected problem: `what` names the file, line or field; `fix` says what to do."""

    def __init__(self, what: str, fix: str | None = None):
        self.what, self.fix = str(what), fix
        super().__init__(self.what if not fix else f"{self.what} ({fix})")


def one_line(text: str) -> str:
    """A multi-line message (a list of problems) as one line: the head, then the items joined by '; '."""
    lines = [ln.strip().removeprefix("- ").strip() for ln in str(text).splitlines() if ln.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else ""
    return f"{lines[0]}: {'; '.join(lines[1:])}"


def problems(err: ValidationError, limit: int = 5) -> str:
    """A pydantic ValidationError's problems as 'field: message (got ...)' items, joined by '; '."""
    items = []
    for e in err.errors()[:limit]:
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown field: remove it or check the spelling" if e["type"] == "extra_forbidden" else \
            e["msg"].removeprefix("Value error, ")
        got = repr(e.get("input"))
        items.append(f"{where}: {msg} (got {got[:60] + '...' if len(got) > 60 else got})")
    more = f"; and {err.error_count() - limit} more" if err.error_count() > limit else ""
    return "; ".join(items) + more


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "[Errno 28]", "file write failed")


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def disk_full(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it: torch and safetensors wrap the OSError) is a full disk or quota."""
    return any((isinstance(e, OSError) and e.errno in _DISK_FULL)
               or any(t in str(e) for t in _DISK_FULL_TEXT) for e in _chain(exc))


def _os_error(e: OSError) -> MesascopeError | None:
    name = e.filename if e.filename is not None else "a file"
    if e.errno in _DISK_FULL:
        return MesascopeError(f"no space left on the device writing {name}",
                              "free some space, or give --out a folder on another disk; finished stages are kept")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "read-only file system" if e.errno == errno.EROFS else "permission denied"
        return MesascopeError(f"cannot access {name}: {why}", "choose a folder you can write to, or fix its permissions")
    if e.errno == errno.ENOENT:
        return MesascopeError(f"{name}: no such file or directory", "check the path")
    if e.errno == errno.ENOTDIR:
        return MesascopeError(f"{name}: part of this path is a file, not a folder", "choose another path")
    if e.errno == errno.EISDIR:
        return MesascopeError(f"{name} is a folder where a file is needed", "give a file path")
    if e.errno == errno.EEXIST:
        return MesascopeError(f"{name} already exists", "choose another path, or remove it")
    if e.errno is not None:
        return MesascopeError(f"{name}: {e.strerror or e}", "check the path and the disk")
    return None


def _file_read(exc: BaseException) -> str | None:
    """The file a decode error came from: the innermost frame's `path` local naming an existing file (the
    loaders that read with Path.read_text all call it `path`)."""
    tb, found = exc.__traceback__, None
    while tb is not None:
        path = tb.tb_frame.f_locals.get("path")
        if isinstance(path, (str, Path)) and Path(path).is_file():
            found = str(path)
        tb = tb.tb_next
    return found


def expected(exc: BaseException) -> MesascopeError | None:
    """`exc` as the one-line error a user can act on, or None when it is a bug (or an interrupt)."""
    if isinstance(exc, MesascopeError):
        return exc
    if isinstance(exc, UnicodeDecodeError):
        return MesascopeError(f"{_file_read(exc) or 'a file'} is not UTF-8 text ({exc.reason} at byte {exc.start})",
                              "save it as UTF-8")
    if isinstance(exc, RecursionError):  # json.loads on thousands of nested brackets
        return MesascopeError(f"{_file_read(exc) or 'an input file'} nests too deeply to be a mesascope file",
                              "check that it is the file meant")
    if isinstance(exc, ValidationError):
        return MesascopeError(f"{exc.title} does not validate: {problems(exc)}",
                              "correct these fields where they were read from")
    if isinstance(exc, json.JSONDecodeError):
        return MesascopeError(f"not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
                              "rerun the command that wrote it, or repair the file")
    if disk_full(exc) and isinstance(exc, Exception):
        name = next((e.filename for e in _chain(exc) if isinstance(e, OSError) and e.filename), "a file")
        return MesascopeError(f"no space left on the device writing {name}",
                              "free some space, or give --out a folder on another disk; finished stages are kept")
    if isinstance(exc, OSError):
        return _os_error(exc)
    # An exception class mesascope defines (SpecError, SweepError, StudyResultsError, ...) is raised
    # on purpose, with a message that names the input and the fix.
    if isinstance(exc, Exception) and type(exc).__module__.split(".")[0] == "mesascope":
        return MesascopeError(one_line(str(exc)))
    return None


def read_text(path: str | Path, what: str = "file", fix: str = "check the path") -> str:
    """A UTF-8 text file, or a MesascopeError naming it: missing, unreadable, a folder, or not UTF-8 (with the line)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MesascopeError(f"{path}: file not found (a {what} was expected)", fix) from None
    except IsADirectoryError:
        raise MesascopeError(f"{path} is a folder, not a {what}", fix) from None
    except OSError as e:
        raise MesascopeError(f"{path}: cannot read it ({e.strerror or e})", fix) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise MesascopeError(f"{path}:{line}: not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start})",
                             "save the file as UTF-8") from None


def read_json(path: str | Path, what: str = "JSON file", fix: str = "check the path") -> Any:
    """A JSON file's value, or a MesascopeError naming the file and the line."""
    text = read_text(path, what, fix)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise MesascopeError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})", fix) from None
    except RecursionError:
        raise MesascopeError(f"{path} nests too deeply to be a mesascope file", fix) from None
