"""Static, self-contained HTML report for one mesascope run (inline CSS and SVG, no JS)."""

from mesascope.report.html import render_report, write_report

__all__ = ["render_report", "write_report"]
