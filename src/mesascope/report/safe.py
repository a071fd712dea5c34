"""Shared by the report's renderers: escaping, tolerant reads of an untrusted results dict, and the
figure cells and tables every section draws with."""

from __future__ import annotations

import html

from mesascope.report.svg import as_finite

NOT_MEASURED = '<p class="nm">not measured</p>'


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def as_dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def as_list(value: object) -> list:
    return value if isinstance(value, list) else []


def rate(value: object) -> str:
    f = as_finite(value)
    return f"{f:.3f}" if f is not None else "—"


def ci_bounds(m: dict) -> tuple[float | None, float | None]:
    bounds = m.get("ci")
    if isinstance(bounds, (list, tuple)) and len(bounds) == 2:
        return as_finite(bounds[0]), as_finite(bounds[1])
    return None, None


def ci(m: dict) -> str:
    lo, hi = ci_bounds(m)
    return f"[{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "—"


def n(m: dict) -> str:
    count = m.get("n")
    return esc(count) if count is not None else "—"


def fig_cell(m: object) -> str:
    """Compact 'value [lo, hi] n=…' for dense tables; the headline table splits the columns."""
    m = as_dict(m)
    if as_finite(m.get("value")) is None:
        return '<span class="nm">not measured</span>'
    return f'{rate(m["value"])} <span class="ci">{ci(m)} n={n(m)}</span>'


def point(x: object, m: object) -> tuple:
    m = as_dict(m)
    return (x, m.get("value"), *ci_bounds(m))


def table(
    headers: list[str],
    rows: list[list[str]],
    num_cols: tuple[int, ...] = (),
    txt_cols: tuple[int, ...] = (),
) -> str:
    """Cells in ``rows`` are already-safe HTML; headers are escaped here."""

    def cell(i: int, c: str) -> str:
        cls = "num" if i in num_cols else "txt" if i in txt_cols else ""
        return f'<td class="{cls}">{c}</td>' if cls else f"<td>{c}</td>"

    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(f"<tr>{''.join(cell(i, c) for i, c in enumerate(row))}</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
