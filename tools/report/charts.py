"""Horizontal bar charts as inline SVG (no script, no network): one bar per label."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

__all__ = ["bar_chart"]

_ROW = 22
_LABEL = 260
_BAR = 360
_VALUE = 110


def _short(label: str, keep: int = 36) -> str:
    """The label's end (a test id's name is at its end), so it fits left of the bars."""
    return label if len(label) <= keep else "\u2026" + label[-keep:]


def bar_chart(
    title: str,
    bars: Sequence[tuple[str, float, str]],
    maximum: float | None = None,
    chart_id: str = "",
) -> str:
    """An <svg> of (label, value, shown text) bars, scaled to `maximum` (default: the
    largest value). An empty list draws a one-line "no data" chart, so the chart is
    never silently missing."""
    top = maximum if maximum is not None else max((v for _, v, _ in bars), default=0.0)
    height = _ROW * (max(len(bars), 1) + 1)
    width = _LABEL + _BAR + _VALUE
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{escape(chart_id)}" '
        f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}">',
        f'<text x="0" y="15" class="chart-title">{escape(title)}</text>',
    ]
    if not bars:
        parts.append(f'<text x="0" y="{_ROW + 15}">no data</text>')
    for index, (label, value, shown) in enumerate(bars):
        y = _ROW * (index + 1)
        length = _BAR * (value / top) if top > 0 else 0.0
        parts += [
            f'<text x="{_LABEL - 6}" y="{y + 15}" text-anchor="end">{escape(_short(label))}</text>',
            f'<rect class="bar" x="{_LABEL}" y="{y + 3}" width="{length:.1f}" height="{_ROW - 6}">'
            f"<title>{escape(label)}: {escape(shown)}</title></rect>",
            f'<text x="{_LABEL + length + 4:.1f}" y="{y + 15}">{escape(shown)}</text>',
        ]
    parts.append("</svg>")
    return "\n".join(parts)
