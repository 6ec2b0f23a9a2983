"""Server-side SVG charts: the geometry in Python, the markup in a Jinja macro (autoescaped).

No JavaScript ships for charts: a page is complete at first paint and nothing runs in the
browser that a pasted prompt could reach.
"""

from __future__ import annotations

import math
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


@dataclass(frozen=True)
class GraphNode:
    key: str  # account id
    label: str  # account name (or id)
    x: float
    y: float
    marked: bool  # an action stands on it


@dataclass(frozen=True)
class GraphLine:
    x1: float
    y1: float
    x2: float
    y2: float
    kind: str  # the link kind this stroke draws (one stroke per kind, side by side)
    title: str  # tooltip: the pair and every kind it shares


@dataclass(frozen=True)
class Graph:
    size: int  # px, square
    nodes: tuple[GraphNode, ...]
    lines: tuple[GraphLine, ...]


def network_graph(
    nodes: Sequence[tuple[str, str, bool]],  # (N,) (id, label, marked)
    edges: Sequence[tuple[str, str, tuple[str, ...], str]],  # (E,) (a, b, kinds, tooltip)
    size: int = 560,
    gap: float = 3.0,  # px between the parallel strokes of a pair sharing several kinds
) -> Graph:
    """Members on a circle (sorted, so a cluster always draws the same), one straight stroke
    per kind of link between two members, offset side by side so each kind stays visible."""
    centre, radius = size / 2, size / 2 - 70  # room for the labels outside the circle
    n = max(1, len(nodes))
    placed = {
        key: GraphNode(
            key,
            label,
            centre + radius * math.cos(2 * math.pi * i / n - math.pi / 2),
            centre + radius * math.sin(2 * math.pi * i / n - math.pi / 2),
            marked,
        )
        for i, (key, label, marked) in enumerate(nodes)
    }
    lines = []
    for a, b, kinds, title in edges:
        if a not in placed or b not in placed:
            continue
        pa, pb = placed[a], placed[b]
        length = math.hypot(pb.x - pa.x, pb.y - pa.y) or 1.0
        nx, ny = -(pb.y - pa.y) / length, (pb.x - pa.x) / length  # unit normal
        for j, kind in enumerate(kinds):
            shift = (j - (len(kinds) - 1) / 2) * gap
            lines.append(
                GraphLine(
                    pa.x + nx * shift,
                    pa.y + ny * shift,
                    pb.x + nx * shift,
                    pb.y + ny * shift,
                    kind,
                    title,
                )
            )
    return Graph(size, tuple(placed.values()), tuple(lines))
