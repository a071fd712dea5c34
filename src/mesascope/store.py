"""Content-addressed run directories with atomic writes.

Each stage of the pipeline (organism, stress, measurements, probes) lives in
`<root>/runs/<stage>-<hash>/`, where the hash covers the stage's full spec and the hashes of
the stages it reads. A stage is finished when its `done.json` exists; finished stages are
never recomputed (unless `fresh`). Every file is written to a temporary name in the same
directory and renamed into place, so a crash leaves either the old file or the new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared like any file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it is renamed to `final` (the old one moved aside first)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o755 & ~_UMASK)  # mkdtemp makes 0700; an organism directory is meant to be shared
        # Move the old directory aside before renaming the new one in, so a crash at any point
        # leaves a complete copy on disk (the old one under its .old name at worst).
        old = final.with_name(f".{final.name}.{os.getpid()}.old")
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def digest(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class RunStore:
    def __init__(self, root: str | Path, fresh: bool = False):
        self.root = Path(root)
        self.fresh = fresh
        self._cleared: set[Path] = set()

    def stage_dir(self, stage: str, key: str) -> Path:
        """The directory of one stage; its name hashes the stage's key with the code version,
        so a new mesascope release never reuses results computed by an older one."""
        from . import __version__

        d = self.root / "runs" / f"{stage}-{digest(key, __version__)}"
        if self.fresh and d not in self._cleared:
            # --fresh recomputes each stage once per invocation, then reuses it within the run.
            shutil.rmtree(d, ignore_errors=True)
            self._cleared.add(d)
        d.mkdir(parents=True, exist_ok=True)
        return d

    @staticmethod
    def is_done(d: Path) -> bool:
        return (d / "done.json").exists()

    @staticmethod
    def mark_done(d: Path, **info: Any) -> None:
        atomic_write_json(d / "done.json", {"finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **info})

    @staticmethod
    def read_json(path: Path) -> Any:
        return json.loads(Path(path).read_text(encoding="utf-8"))
