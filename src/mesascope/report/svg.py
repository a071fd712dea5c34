"""Tiny dependency-free inline-SVG charts for the static report.

The report must open offline with no JavaScript, so charts are plain SVG strings built here.
Every piece of text that lands in the SVG goes through ``html.escape``: series labels come from
results files, which are untrusted.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence

# Colour-blind-friendly palette (Okabe-Ito); cycles when there are more series than colours.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")

_FONT = 'font-family="system-ui, sans-serif"'


def _esc(text: object, limit: int | None = None) -> str:
    s = str(text)
    if limit is not None and len(s) > limit:
        s = s[: limit - 1] + "…"
    return html.escape(s, quote=True)


def as_finite(v: object) -> float | None:
    """A finite float or None: NaN AUROCs and missing CIs must not crash or draw garbage."""
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _fmt_tick(v: float) -> str:
    return f"{v:.0f}" if abs(v - round(v)) < 1e-9 else f"{v:.3g}"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round-number ticks covering [lo, hi] (1/2/5 x 10^k steps)."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks, t = [], start
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks


class _Frame:
    """Maps data coordinates to pixels and draws the shared chrome (title, axes, grid)."""

    def __init__(self, width: int, height: int, legend_rows: int, x_range, y_range):
        self.width, self.height = width, height
        self.left, self.right, self.top = 56, 16, 32
        self.bottom = 44 + 16 * legend_rows
        self.x0, self.x1 = x_range
        self.y0, self.y1 = y_range
        if self.x1 <= self.x0:  # a single x value: widen so it sits in the middle
            self.x0, self.x1 = self.x0 - 1, self.x1 + 1
        if self.y1 <= self.y0:
            self.y0, self.y1 = self.y0 - 1, self.y1 + 1

    @property
    def plot_w(self) -> float:
        return self.width - self.left - self.right

    @property
    def plot_h(self) -> float:
        return self.height - self.top - self.bottom

    def px(self, x: float) -> float:
        return self.left + (x - self.x0) / (self.x1 - self.x0) * self.plot_w

    def py(self, y: float) -> float:
        y = min(max(y, self.y0), self.y1)  # clamp: a CI past the axis is drawn to the edge
        return self.top + (1 - (y - self.y0) / (self.y1 - self.y0)) * self.plot_h

    def open(self, title: str) -> list[str]:
        return [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" height="{self.height}" '
            f'viewBox="0 0 {self.width} {self.height}" role="img" class="chart">',
            f"<title>{_esc(title)}</title>",
            f'<text x="{self.width / 2:.1f}" y="20" text-anchor="middle" font-size="14" '
            f'font-weight="600" {_FONT}>{_esc(title, 80)}</text>',
        ]

    def axes(self, x_label: str, y_label: str, x_ticks: Iterable[tuple[float, str]]) -> list[str]:
        out = []
        bottom_px = self.top + self.plot_h
        for t in nice_ticks(self.y0, self.y1):
            y = self.py(t)
            out.append(
                f'<line x1="{self.left}" y1="{y:.1f}" x2="{self.left + self.plot_w:.1f}" '
                f'y2="{y:.1f}" stroke="#e5e5e5"/>'
                f'<text x="{self.left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
                f"{_FONT}>{_esc(_fmt_tick(t))}</text>"
            )
        for x, label in x_ticks:
            xp = self.px(x)
            out.append(
                f'<line x1="{xp:.1f}" y1="{bottom_px:.1f}" x2="{xp:.1f}" y2="{bottom_px + 4:.1f}" '
                f'stroke="#333"/><text x="{xp:.1f}" y="{bottom_px + 16:.1f}" text-anchor="middle" '
                f'font-size="11" {_FONT}>{_esc(label, 12)}</text>'
            )
        out.append(
            f'<path d="M{self.left},{self.top} V{bottom_px:.1f} H{self.left + self.plot_w:.1f}" '
            f'fill="none" stroke="#333"/>'
            f'<text x="{self.left + self.plot_w / 2:.1f}" y="{bottom_px + 32:.1f}" '
            f'text-anchor="middle" font-size="12" {_FONT}>{_esc(x_label, 80)}</text>'
            f'<text transform="translate(14,{self.top + self.plot_h / 2:.1f}) rotate(-90)" '
            f'text-anchor="middle" font-size="12" {_FONT}>{_esc(y_label, 60)}</text>'
        )
        return out

    def legend(self, entries: Sequence[tuple[str, str, bool]], per_row: int) -> list[str]:
        out = []
        col_w = (self.width - self.left) / per_row
        base_y = self.height - 16 * ((len(entries) + per_row - 1) // per_row) + 4
        for i, (label, colour, dashed) in enumerate(entries):
            x = self.left + (i % per_row) * col_w
            y = base_y + (i // per_row) * 16
            dash = ' stroke-dasharray="4 3"' if dashed else ""
            out.append(
                f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{x + 18:.1f}" y2="{y:.1f}" stroke="{colour}" '
                f'stroke-width="2"{dash}/><text x="{x + 22:.1f}" y="{y + 4:.1f}" font-size="11" '
                f"{_FONT}>{_esc(label, max(int((col_w - 26) / 6.5), 4))}</text>"
            )
        return out

    def no_data(self) -> str:
        return (
            f'<text x="{self.left + self.plot_w / 2:.1f}" y="{self.top + self.plot_h / 2:.1f}" '
            f'text-anchor="middle" font-size="13" fill="#888" {_FONT}>no data</text>'
        )


def line_chart(
    series: Sequence[dict],
    *,
    title: str,
    x_label: str,
    y_label: str,
    y_range: tuple[float, float] = (0, 1),
    width: int = 560,
    height: int = 300,
    hline: float | None = None,
) -> str:
    """Line chart with a translucent CI band per series.

    ``series``: ``[{"label": str, "points": [(x, y, lo, hi), ...], "dashed": bool?}, ...]``.
    ``lo``/``hi`` may be None (no band for that point). ``hline`` draws a dotted reference
    line, e.g. chance AUROC at 0.5.
    """
    cleaned = []
    for s in series:
        pts = []
        for p in s.get("points") or []:
            p = list(p) + [None] * (4 - len(p))
            x, y = as_finite(p[0]), as_finite(p[1])
            if x is not None and y is not None:
                pts.append((x, y, as_finite(p[2]), as_finite(p[3])))
        cleaned.append((str(s.get("label", "")), sorted(pts), bool(s.get("dashed"))))

    xs = sorted({p[0] for _, pts, _ in cleaned for p in pts})
    # As many legend columns as the longest label allows (~6.5 px a character plus swatch).
    longest = max((min(len(label), 40) for label, _, _ in cleaned), default=1)
    per_row = max(1, min(3, int((width - 56) // (longest * 6.5 + 34))))
    rows = (len(cleaned) + per_row - 1) // per_row
    frame = _Frame(width, height, rows, (xs[0], xs[-1]) if xs else (0, 1), y_range)
    out = frame.open(title)
    # Few distinct x values (layers, checkpoints): label each one; otherwise round-number ticks.
    tick_xs = xs if 0 < len(xs) <= 12 else nice_ticks(frame.x0, frame.x1)
    out += frame.axes(x_label, y_label, [(t, _fmt_tick(t)) for t in tick_xs])
    if hline is not None and y_range[0] <= hline <= y_range[1]:
        y = frame.py(hline)
        out.append(
            f'<line x1="{frame.left}" y1="{y:.1f}" x2="{frame.left + frame.plot_w:.1f}" '
            f'y2="{y:.1f}" stroke="#999" stroke-dasharray="2 3"/>'
        )
    if not xs:
        out.append(frame.no_data())

    legend = []
    for i, (label, pts, dashed) in enumerate(cleaned):
        colour = PALETTE[i % len(PALETTE)]
        legend.append((label, colour, dashed))
        banded = [p for p in pts if p[2] is not None and p[3] is not None]
        if len(banded) >= 2:
            upper = " ".join(f"{frame.px(x):.1f},{frame.py(hi):.1f}" for x, _, _, hi in banded)
            lower = " ".join(
                f"{frame.px(x):.1f},{frame.py(lo):.1f}" for x, _, lo, _ in reversed(banded)
            )
            out.append(f'<polygon points="{upper} {lower}" fill="{colour}" fill-opacity="0.15"/>')
        elif len(banded) == 1:  # a band needs two points; one point gets an error bar
            x, _, lo, hi = banded[0]
            out.append(
                f'<line x1="{frame.px(x):.1f}" y1="{frame.py(lo):.1f}" x2="{frame.px(x):.1f}" '
                f'y2="{frame.py(hi):.1f}" stroke="{colour}" stroke-opacity="0.5" stroke-width="3"/>'
            )
        if len(pts) >= 2:
            dash = ' stroke-dasharray="4 3"' if dashed else ""
            path = " ".join(f"{frame.px(x):.1f},{frame.py(y):.1f}" for x, y, _, _ in pts)
            out.append(
                f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>'
            )
        for x, y, _, _ in pts:
            out.append(
                f'<circle cx="{frame.px(x):.1f}" cy="{frame.py(y):.1f}" r="3" fill="{colour}"/>'
            )
    out += frame.legend(legend, per_row)
    out.append("</svg>")
    return "\n".join(out)


def bar_chart(
    bars: Sequence[dict],
    *,
    title: str,
    y_label: str,
    y_range: tuple[float, float] = (0, 1),
    width: int = 560,
    height: int = 260,
) -> str:
    """Vertical bars with CI error bars. ``bars``: ``[{"label", "value", "lo", "hi"}, ...]``."""
    frame = _Frame(width, height, 0, (0, max(len(bars), 1)), y_range)
    frame.bottom = 28  # no x-axis title or legend, only the bar labels
    out = frame.open(title)
    slot = frame.plot_w / max(len(bars), 1)
    # Labels sit under the bar centres; they are truncated to the slot width.
    ticks = [(i + 0.5, str(b.get("label", ""))) for i, b in enumerate(bars)]
    out += frame.axes("", y_label, [])
    bottom_px = frame.top + frame.plot_h
    for i, ((xc, label), bar) in enumerate(zip(ticks, bars)):
        colour = PALETTE[i % len(PALETTE)]
        cx = frame.px(xc)
        out.append(
            f'<text x="{cx:.1f}" y="{bottom_px + 16:.1f}" text-anchor="middle" font-size="11" '
            f"{_FONT}>{_esc(label, max(int(slot / 7), 4))}</text>"
        )
        value = as_finite(bar.get("value"))
        if value is None:
            continue
        top = frame.py(value)
        bw = slot * 0.6
        out.append(
            f'<rect x="{cx - bw / 2:.1f}" y="{top:.1f}" width="{bw:.1f}" '
            f'height="{max(bottom_px - top, 0):.1f}" fill="{colour}" fill-opacity="0.75"/>'
        )
        lo, hi = as_finite(bar.get("lo")), as_finite(bar.get("hi"))
        if lo is not None and hi is not None:
            out.append(
                f'<path d="M{cx:.1f},{frame.py(lo):.1f} V{frame.py(hi):.1f} '
                f'M{cx - 5:.1f},{frame.py(lo):.1f} h10 M{cx - 5:.1f},{frame.py(hi):.1f} h10" '
                f'stroke="#222" fill="none"/>'
            )
    if not bars:
        out.append(frame.no_data())
    out.append("</svg>")
    return "\n".join(out)


def _diverging(v: float, scale: float) -> str:
    """White at 0, blue for positive, red for negative, saturating at |v| = scale."""
    t = min(abs(v) / scale, 1.0) if scale > 0 else 0.0
    r, g, b = (0x00, 0x72, 0xB2) if v >= 0 else (0xD5, 0x5E, 0x00)
    mix = lambda c: round(255 + (c - 255) * t)  # noqa: E731
    return f"#{mix(r):02x}{mix(g):02x}{mix(b):02x}"


def heatmap(
    values: Sequence[Sequence[object]],
    *,
    row_labels: Sequence[object],
    col_labels: Sequence[object],
    title: str,
    x_label: str,
    y_label: str,
    cell: int = 34,
) -> str:
    """A rows x columns grid coloured on a diverging scale centred at 0, each cell labelled.

    Non-finite values are drawn grey with no label. The scale saturates at the largest |value|.
    """
    finite = [f for row in values for f in map(as_finite, row) if f is not None]
    scale = max((abs(f) for f in finite), default=0.0)
    left, top = 84, 34
    width = max(left + cell * max(len(col_labels), 1) + 16, 7 * len(title) + 20)
    height = top + cell * max(len(row_labels), 1) + 70
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" class="chart">',
        f"<title>{_esc(title)}</title>",
        f'<text x="{width / 2:.1f}" y="20" text-anchor="middle" font-size="14" font-weight="600" '
        f"{_FONT}>{_esc(title, 90)}</text>",
    ]
    for i, row in enumerate(values):
        y = top + i * cell
        out.append(f'<text x="{left - 6}" y="{y + cell / 2 + 4:.1f}" text-anchor="end" font-size="11" '
                   f"{_FONT}>{_esc(row_labels[i] if i < len(row_labels) else '', 12)}</text>")
        for j, v in enumerate(row):
            f = as_finite(v)
            x = left + j * cell
            fill = "#ddd" if f is None else _diverging(f, scale)
            out.append(f'<rect x="{x}" y="{y}" width="{cell - 1}" height="{cell - 1}" fill="{fill}"/>')
            if f is not None:
                ink = "#fff" if scale and abs(f) / scale > 0.6 else "#222"
                out.append(f'<text x="{x + cell / 2:.1f}" y="{y + cell / 2 + 4:.1f}" text-anchor="middle" '
                           f'font-size="9" fill="{ink}" {_FONT}>{_esc(_fmt_cell(f))}</text>')
    bottom = top + cell * len(values)
    for j, label in enumerate(col_labels):
        x = left + j * cell + cell / 2
        out.append(f'<text transform="translate({x + 3:.1f},{bottom + 10}) rotate(-45)" text-anchor="end" font-size="10" '
                   f"{_FONT}>{_esc(label, 10)}</text>")
    out.append(f'<text x="{left + cell * len(col_labels) / 2:.1f}" y="{height - 6}" text-anchor="middle" '
               f'font-size="12" {_FONT}>{_esc(x_label, 80)}</text>')
    out.append(f'<text transform="translate(12,{top + cell * len(values) / 2:.1f}) rotate(-90)" '
               f'text-anchor="middle" font-size="12" {_FONT}>{_esc(y_label, 40)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _fmt_cell(f: float) -> str:
    return f"{f:.2f}" if abs(f) < 10 else f"{f:.0f}"
