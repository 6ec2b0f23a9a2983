"""Server-side SVG charts: the geometry in Python, the markup in a Jinja macro (autoescaped).

No JavaScript ships for charts: a page is complete at first paint and nothing runs in the
browser that a pasted prompt could reach.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ChartStyle:
    width: int = 640  # px; the SVG scales to its box (viewBox)
    height: int = 160  # px
    margin_left: int = 56  # room for the y-axis labels
    margin_bottom: int = 22  # room for the x-axis labels

    def __post_init__(self) -> None:
        if self.width <= self.margin_left or self.height <= self.margin_bottom:
            raise ValueError("the chart must be larger than its margins")


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    title: str  # tooltip: the bucket and its value


@dataclass(frozen=True)
class BarChart:
    title: str
    width: int
    height: int
    bars: tuple[Bar, ...]
    y_labels: tuple[tuple[float, str], ...]  # (y position, text)
    x_labels: tuple[tuple[float, str], ...]  # (x position, text)
    total: str


def _short(value: float) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.1f}{suffix}"
    return f"{value:.0f}"


def _clock(ts: float, span_s: float) -> str:
    fmt = "%H:%M" if span_s <= 2 * 86400 else "%m-%d"
    return time.strftime(fmt, time.gmtime(ts))


def bar_chart(
    title: str,
    starts: Sequence[float],  # (N,) bucket start times, Unix seconds
    values: Sequence[float],  # (N,) one value per bucket
    width_s: float,
    style: ChartStyle | None = None,
) -> BarChart:
    """Bars over time with a labelled y-axis (0, half, max) and four time labels."""
    style = style or ChartStyle()
    n = max(1, len(values))
    peak = max([*values, 1])
    plot_w = style.width - style.margin_left
    plot_h = style.height - style.margin_bottom - 4
    step = plot_w / n
    bars = tuple(
        Bar(
            x=style.margin_left + i * step + 0.5,
            y=4 + plot_h - v / peak * plot_h,
            width=max(step - 1.0, 0.5),
            height=v / peak * plot_h,
            title=f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(s))} UTC: {_short(v)}",
        )
        for i, (s, v) in enumerate(zip(starts, values, strict=True))
    )
    y_labels = tuple((4 + plot_h - f * plot_h, _short(f * peak)) for f in (0.0, 0.5, 1.0))
    span = width_s * n
    x_labels = tuple(
        (style.margin_left + i * step, _clock(starts[i], span))
        for i in range(0, len(starts), max(1, len(starts) // 4))
    )
    return BarChart(title, style.width, style.height, bars, y_labels, x_labels, _short(sum(values)))
