"""The `mesascope` command: the typer app inside the one error boundary.

An expected problem (`errors.expected`) prints `error: <what> (<fix>)` on one line and exits 2;
anything else prints one line and the path of its saved traceback and exits 1 (`--debug`, or
MESASCOPE_DEBUG=1, prints the traceback in full instead). No traceback reaches the terminal otherwise.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from pathlib import Path


def save_traceback(exc: BaseException) -> Path:
    """The full traceback, with the command line, in a file of its own under the temp folder."""
    fd, name = tempfile.mkstemp(prefix=f"mesascope-error-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".txt")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(f"command: mesascope {' '.join(sys.argv[1:])}\n\n")
        f.write("".join(traceback.format_exception(exc)))
    return Path(name)


def _click_classes() -> tuple[tuple, tuple]:
    """(usage errors, aborts) of click and of the click that newer typers vendor (typer._click)."""
    import importlib

    usage, abort = [], []
    for mod in ("click.exceptions", "typer._click.exceptions", "typer.exceptions"):
        try:
            m = importlib.import_module(mod)
        except ImportError:
            continue
        usage += [m.ClickException] if hasattr(m, "ClickException") else []
        abort += [m.Abort] if hasattr(m, "Abort") else []
    return tuple(usage), tuple(abort)


def run_app(app, argv: list[str] | None = None) -> int:
    """Run the typer `app` on `argv` (default: sys.argv[1:]); returns the exit code, never raises."""
    from .errors import expected, one_line
    from .terminal import console, safe

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("MESASCOPE_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    usage, abort = _click_classes()
    try:
        code = app(args=argv, prog_name="mesascope", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except usage as e:  # a usage error: typer's own message and `--help` hint
        try:
            from typer import rich_utils

            rich_utils.rich_format_error(e)
        except ImportError:
            e.show()
        return e.exit_code
    except (*abort, KeyboardInterrupt):
        console.print("[red]error:[/red] interrupted (finished stages are stored; rerun the command to go on)",
                      soft_wrap=True)
        return 130
    except Exception as e:  # noqa: BLE001 - the boundary: everything becomes one line
        if (err := expected(e)) is not None and not debug:
            console.print(f"[red]error:[/red] {safe(one_line(str(err)))}", soft_wrap=True)
            return 2
        if debug:
            console.print(safe("".join(traceback.format_exception(e))), soft_wrap=True, highlight=False)
            return 2 if err is not None else 1
        where = save_traceback(e)
        what = one_line(f"{type(e).__name__}: {e}")
        console.print(f"[red]error:[/red] unexpected {safe(what[:300])} (a bug in mesascope: the traceback is in "
                      f"{safe(where)}; rerun with --debug to print it)", soft_wrap=True)
        return 1


def main(argv: list[str] | None = None) -> int:
    from .cli import app

    return run_app(app, argv)


if __name__ == "__main__":
    sys.exit(main())
