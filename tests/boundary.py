"""Helpers for the tests of the error boundary: run the CLI as its console script does, mount a tmpfs."""

from __future__ import annotations

import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from mesascope.__main__ import main


def run(capsys, *args) -> tuple[int, str]:
    """`mesascope ARGS` in process, through the boundary: (exit code, everything printed)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out + err


@contextmanager
def tmpfs(path: Path, options: str, why: str):
    """A tmpfs mounted on `path` for the block; skipped, saying `why` it matters, where mounting is not allowed."""
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                                                       capture_output=True).returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {why}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
