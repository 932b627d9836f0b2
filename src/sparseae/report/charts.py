"""Small charts as self-contained SVG text: line plots, histograms, scatter plots.

No plotting library: the HTML report inlines these strings, so it opens from
disk with no network. All text is escaped. Hand-written on purpose: matplotlib would add a
heavy dependency for three kinds of chart, and its SVG is many times larger; the JavaScript
chart libraries need a network or an inlined bundle per page.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]


@dataclass
class Series:
    """One named set of points; ``kind`` is 'line', 'points' or 'bars' (x = bin left edges, width = step)."""

    name: str
    x: list[float]
    y: list[float]
    kind: str = "line"
    color: str | None = None
    labels: list[str] = field(default_factory=list)
    """Optional text per point, shown on hover."""


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if m * step >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.3g}" if v != 0 else "0"


def chart(
    series: list[Series],
    title: str,
    xlabel: str,
    ylabel: str,
    width: int = 480,
    height: int = 300,
    log_y: bool = False,
    marks: list[tuple[float, str]] | None = None,
    legend: str = "right",
) -> str:
    """An SVG chart of ``series``: axes, ticks, a legend at the top ``legend`` corner, vertical ``marks`` (x, label)."""
    left, right, top, bottom = 64, 16, 28, 44
    xs = [v for s in series for v in s.x] + [m[0] for m in marks or []]
    ys = [v for s in series for v in s.y if not (log_y and v <= 0)]
    if not xs or not ys:
        empty = f'<text x="8" y="30">{escape(title)}: no data</text>'
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="60">{empty}</svg>'
    bars = [s for s in series if s.kind == "bars"]
    step = min((s.x[1] - s.x[0] for s in bars if len(s.x) > 1), default=0)
    x0, x1 = min(xs), max(xs) + step
    fy = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    y0, y1 = min(map(fy, ys)), max(map(fy, ys))
    if bars and not log_y:
        y0 = min(y0, 0)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - 1, y1 + 1
    pad = 0.05 * (y1 - y0)
    y0, y1 = (y0 if bars and not log_y else y0 - pad), y1 + pad
    pw, ph = width - left - right, height - top - bottom

    def px(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * pw

    def py(v: float) -> float:
        return top + (1 - (fy(v) - y0) / (y1 - y0)) * ph

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
        f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>',
    ]
    for t in _ticks(x0, x1):
        out.append(f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{top + ph}" y2="{top + ph + 4}" stroke="#666"/>')
        out.append(f'<text x="{px(t):.1f}" y="{top + ph + 16}" text-anchor="middle">{_fmt(t)}</text>')
    for t in _ticks(y0, y1):
        label = _fmt(10**t) if log_y else _fmt(t)
        out.append(f'<line x1="{left - 4}" x2="{left}" y1="{top + (1 - (t - y0) / (y1 - y0)) * ph:.1f}" '
                   f'y2="{top + (1 - (t - y0) / (y1 - y0)) * ph:.1f}" stroke="#666"/>')  # fmt: skip
        out.append(f'<text x="{left - 6}" y="{top + (1 - (t - y0) / (y1 - y0)) * ph + 4:.1f}" text-anchor="end">{label}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 8}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text transform="translate(14 {top + ph / 2}) rotate(-90)" text-anchor="middle">{escape(ylabel)}</text>')
    for x, label in marks or []:
        out.append(f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{top}" y2="{top + ph}" stroke="#888" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{px(x) + 3:.1f}" y="{top + 12}" fill="#555">{escape(label)}</text>')
    for i, s in enumerate(series):
        color = s.color or PALETTE[i % len(PALETTE)]
        points = [(x, y) for x, y in zip(s.x, s.y, strict=True) if not (log_y and y <= 0)]
        if s.kind == "bars":
            for x, y in points:
                h = py(y)
                out.append(f'<rect x="{px(x):.1f}" y="{h:.1f}" width="{max(px(x + step) - px(x) - 1, 1):.1f}" '
                           f'height="{max(top + ph - h, 0):.1f}" fill="{color}"/>')  # fmt: skip
        elif s.kind == "points":
            for j, (x, y) in enumerate(points):
                tip = f"<title>{escape(s.labels[j])}</title>" if j < len(s.labels) else ""
                out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="4" fill="{color}">{tip}</circle>')
            if len(points) > 1:
                path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in sorted(points))
                out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-opacity="0.5"/>')
        else:
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        lx = left + 8 if legend == "left" else left + pw - 8 - 14 - 7 * max(len(t.name) for t in series)
        out.append(f'<rect x="{lx}" y="{top + 8 + 14 * i}" width="10" height="10" fill="{color}"/>')
        out.append(f'<text x="{lx + 14}" y="{top + 17 + 14 * i}">{escape(s.name)}</text>')
    out.append("</svg>")
    return "\n".join(out)
