"""Provenance of a results file: which command wrote it, from which commit, on which machine, when.

Every table or figure on the documentation site is rendered from a checked-in results file
(`docs/results/NAME.json`) that a named command wrote; `write_results` adds the block that says so.
Training numerics differ from CPU to CPU, so the machine is part of what a figure means.

This module imports nothing else from mesascope, and never prints.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

_PACKAGE_DIR = Path(__file__).resolve().parent


def provenance(command: str | None = None) -> dict[str, Any]:
    """The provenance block: command, commit, machine and creation time (UTC, ISO 8601).

    `command` defaults to the mesascope command line of this process (`mesascope ` + its arguments).
    """
    if command is None:
        command = "mesascope " + shlex.join(sys.argv[1:])
    return {"command": command.strip(), **_commit(), "machine": machine(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def write_results(path: str | Path, data: dict[str, Any], command: str | None = None) -> Path:
    """Write `data` as JSON to `path` with a fresh provenance block first; atomic (temp file + os.replace).

    A `provenance` key already in `data` is replaced: the process writing the file is the one it names.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"provenance": provenance(command), **{k: v for k, v in data.items() if k != "provenance"}}
    text = json.dumps(body, indent=2, ensure_ascii=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a results file is meant to be read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _commit() -> dict[str, Any]:
    """`commit` (short hash of the source tree's HEAD; else $MESASCOPE_COMMIT, said so; else the package
    version) and, under git, `dirty`."""
    git = _git("rev-parse", "--show-toplevel", "--short", "HEAD")
    if git is not None:
        lines = git.splitlines()
        # Only the repository this file belongs to (an installed copy inside some other checkout is not it).
        if len(lines) == 2 and Path(lines[0]).resolve() / "src" / "mesascope" == _PACKAGE_DIR:
            status = _git("status", "--porcelain", "--untracked-files=no", "--", str(_PACKAGE_DIR))
            return {"commit": lines[1], "dirty": bool(status)} if status is not None else {"commit": lines[1]}
    if os.environ.get("MESASCOPE_COMMIT"):  # a copy of the tree without .git (a cluster node, a GPU box)
        return {"commit": os.environ["MESASCOPE_COMMIT"], "commit_from": "MESASCOPE_COMMIT"}
    try:
        version = metadata.version("mesascope")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {"commit": f"mesascope {version}"}


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=_PACKAGE_DIR, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def machine() -> dict[str, Any]:
    """Python, platform, CPU model and count, and torch's version, threads and device when torch imports."""
    found: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                             "cpus": os.cpu_count()}
    cpu = _cpu_model()
    if cpu:
        found["cpu"] = cpu
    try:
        import torch
    except ImportError:
        return found
    found["torch"] = torch.__version__
    found["torch_threads"] = torch.get_num_threads()
    found["device"] = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    return found


def _cpu_model() -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware"):
            return value.strip() or None
    return platform.processor() or None
