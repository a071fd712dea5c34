"""Shared by the report's renderers: escaping, and tolerant reads of an untrusted results dict."""

from __future__ import annotations

import html

NOT_MEASURED = '<p class="nm">not measured</p>'


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def as_dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def as_list(value: object) -> list:
    return value if isinstance(value, list) else []
