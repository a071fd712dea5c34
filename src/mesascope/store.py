"""Content-addressed run directories with atomic writes.

Each stage of the pipeline (organism, stress, measurements, probes) lives in
`<root>/runs/<stage>-<hash>/`, where the hash covers the stage's full spec and the hashes of
the stages it reads. A stage is finished when its `done.json` exists; finished stages are
never recomputed (unless `fresh`). Every file is written to a temporary name in the same
directory and renamed into place, so a crash leaves either the old file or the new one, and a
full disk leaves no stage marked done. One process (with the workers it starts) holds a root at
a time: a second one is refused in one line (`RunStore.lock`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import MesascopeError, disk_full

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; two processes on one root are not detected there
    fcntl = None  # type: ignore[assignment]


_UMASK = os.umask(0)
os.umask(_UMASK)


def check_writable(path: str | Path, folder: bool = True) -> Path:
    """Refuse, before any work, an output that cannot be written: `path` must be a folder (or a file when
    `folder` is False) that exists and is writable, or be creatable under its nearest existing parent."""
    path = Path(path)
    kind = "folder" if folder else "file"
    if path.exists() and path.is_dir() != folder:
        raise MesascopeError(f"{path} is a {'file' if folder else 'folder'}, not a {kind}",
                             f"give a {kind} path, or move it away")
    probe = path if folder and path.is_dir() else path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise MesascopeError(f"cannot create {path}: {probe} is a file, not a folder", "choose another path")
    try:  # really write (os.access says yes to root on a read-only mount)
        with tempfile.TemporaryFile(dir=probe, prefix=".mesascope-write-check-"):
            pass
    except OSError as e:
        why = "read-only file system" if e.errno == errno.EROFS else "no space left" if disk_full(e) else \
            (e.strerror or str(e)).lower()
        raise MesascopeError(f"cannot write {path}: {probe} is not writable ({why})",
                             "choose a folder you can write to") from None
    return path


def _disk_full_error(path: Path, e: BaseException) -> MesascopeError:
    return MesascopeError(f"no space left on the device writing {path}",
                          "free some space, or give --out a folder on another disk; finished stages are kept")


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
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and disk_full(e):
            raise _disk_full_error(path, e) from e
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
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, Exception) and not isinstance(e, MesascopeError) and disk_full(e):
            raise _disk_full_error(final, e) from e  # torch and safetensors wrap the OSError in their own
        raise


@contextlib.contextmanager
def computing(path: Path) -> Iterator[int | None]:
    """Held while this process computes what `path` will hold: another process of the same run (a forked
    worker, workers.py) that wants it waits here, then finds it written instead of computing it again.
    Yields the lock file's descriptor. (Windows has no advisory locks: there both compute it, the atomic
    write keeps one, and None is yielded.)"""
    if fcntl is None:
        yield None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent / f".{path.name}.lock", os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def file_name(name: str, limit: int = 100) -> str:
    """A user-given name (a recipe's, a study's) as one safe path component: no separators, no '..', no
    control or bidirectional characters, so a file named after it stays inside --out."""
    safe = re.sub(r"[^\w.-]", "_", str(name), flags=re.UNICODE)[:limit].lstrip(".")
    return safe or "unnamed"


def digest(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# root -> [lock file descriptor, RunStores of this process on it]; released when the last one goes.
_LOCKS: dict[Path, list] = {}
_HELD_ENV = "MESASCOPE_HELD_ROOTS"  # roots a parent holds for its workers (a spawned pool inherits it)


def _ancestors() -> set[int]:
    """This process's parent, grandparent, ... (Linux /proc; empty elsewhere)."""
    found, pid = set(), os.getppid()
    while pid > 1 and pid not in found:
        found.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return found


def _release(root: Path) -> None:
    entry = _LOCKS.get(root)
    if entry is not None:
        entry[1] -= 1
        if entry[1] <= 0:
            del _LOCKS[root]
            os.close(entry[0])  # closing the descriptor releases the flock
            held = [p for p in os.environ.get(_HELD_ENV, "").split(os.pathsep) if p and p != str(root)]
            os.environ[_HELD_ENV] = os.pathsep.join(held)


class RunStore:
    def __init__(self, root: str | Path, fresh: bool = False):
        self.root = Path(root)
        self.fresh = fresh
        self._cleared: set[Path] = set()
        self._fresh_mark = f".fresh-{os.getpid()}-{time.time_ns()}"  # this invocation's (see stage_dir)
        check_writable(self.root)
        self.lock()

    def lock(self) -> None:
        """Hold `root` for this process: a second mesascope process on the same root gets a one-line error
        naming the one that holds it. Workers this process starts share it (a spawned pool inherits
        MESASCOPE_HELD_ROOTS; a Ray worker finds the holder among its ancestors)."""
        key = self.root.resolve()
        if key in _LOCKS:
            _LOCKS[key][1] += 1
        elif fcntl is None or str(key) in os.environ.get(_HELD_ENV, "").split(os.pathsep):
            return
        else:
            key.mkdir(parents=True, exist_ok=True)
            fd = os.open(key / ".mesascope.lock", os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 4096).decode("utf-8", "replace").strip()
                os.close(fd)
                pid = int(holder.split(" ", 1)[0]) if holder.split(" ", 1)[0].isdigit() else None
                if pid is not None and pid in _ancestors():
                    return  # a worker of the process that holds it (a Ray or pool worker without the note)
                raise MesascopeError(
                    f"{self.root} is in use by another mesascope process ({holder or 'pid unknown'})",
                    "wait for it to finish, or give this command another --out") from None
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} mesascope {' '.join(sys.argv[1:])}".encode())
            _LOCKS[key] = [fd, 1]
            held = [p for p in os.environ.get(_HELD_ENV, "").split(os.pathsep) if p]
            os.environ[_HELD_ENV] = os.pathsep.join([*held, str(key)])
        weakref.finalize(self, _release, key)

    def stage_dir(self, stage: str, key: str) -> Path:
        """The directory of one stage; its name hashes the stage's key with the code version,
        so a new mesascope release never reuses results computed by an older one."""
        from . import __version__

        d = self.root / "runs" / f"{stage}-{digest(key, __version__)}"
        if self.fresh and d not in self._cleared:
            # --fresh recomputes each stage once per invocation, then reuses it within the run; the
            # invocation's mark tells its forked workers (workers.py) the stage was cleared already.
            with computing(d) as fd:  # the lock file holds the mark of the invocation that last cleared d
                if fd is None or os.pread(fd, 64, 0).decode() != self._fresh_mark:
                    shutil.rmtree(d, ignore_errors=True)
                    if fd is not None:
                        os.ftruncate(fd, 0)
                        os.pwrite(fd, self._fresh_mark.encode(), 0)
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
        from .errors import read_json

        return read_json(path, "stage file", "rerun with --fresh to recompute the stage")
