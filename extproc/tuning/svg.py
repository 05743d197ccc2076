"""The reports' two plots as self-contained SVG text (no plotting library).

`confusion_svg`: a label x decision heatmap, shaded by the share of each row.
`curve_svg`: lines of (x, y) points with marked points, e.g. strong share vs quality over a
threshold sweep, with the baselines.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
FONT = 'font-family="sans-serif" font-size="12"'


def _fmt(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _count(value: float) -> str:
    return f"{value:,.0f}" if abs(value - round(value)) < 1e-9 else f"{value:,.1f}"


def confusion_svg(
    title: str, tiers: Sequence[str], table: Mapping[str, Mapping[str, float]]
) -> str:
    """Rows are labels, columns are decisions; each cell shows its count and row share."""
    cell_w, cell_h, left, top = 96, 44, 110, 58
    width = left + cell_w * len(tiers) + 20
    height = top + cell_h * len(tiers) + 30
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" {FONT}>',
        f"<title>{escape(title)}</title>",
        f'<text x="{width / 2:.0f}" y="18" text-anchor="middle" font-weight="bold">'
        f"{escape(title)}</text>",
        f'<text x="{left + cell_w * len(tiers) / 2:.0f}" y="38" text-anchor="middle">'
        "decision</text>",
        f'<text x="14" y="{top + cell_h * len(tiers) / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + cell_h * len(tiers) / 2:.0f})">label</text>',
    ]
    for col, tier in enumerate(tiers):
        x = left + col * cell_w + cell_w / 2
        parts.append(f'<text x="{x:.0f}" y="{top - 6}" text-anchor="middle">{escape(tier)}</text>')
    for row, label in enumerate(tiers):
        y = top + row * cell_h
        parts.append(
            f'<text x="{left - 8}" y="{y + cell_h / 2 + 4:.0f}" text-anchor="end">'
            f"{escape(label)}</text>"
        )
        cells = table.get(label, {})
        total = sum(cells.values())
        for col, tier in enumerate(tiers):
            value = cells.get(tier, 0.0)
            share = value / total if total else 0.0
            hue = "31,119,180" if row == col else "214,39,40"
            x = left + col * cell_w
            ink = "#fff" if share > 0.55 else "#000"
            parts.append(
                f'<rect x="{x}" y="{y}" width="{cell_w}" height="{cell_h}" '
                f'fill="rgba({hue},{0.08 + 0.85 * share:.2f})" stroke="#fff"/>'
                f'<text x="{x + cell_w / 2:.0f}" y="{y + cell_h / 2 + 4:.0f}" '
                f'text-anchor="middle" fill="{ink}">{_count(value)} '
                f"({_fmt(100 * share)} %)</text>"
            )
    parts.append("</svg>")
    return "\n".join(parts)


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    points: Sequence[tuple[float, float]]
    #: Points drawn as dots with a short caption, e.g. a version's operating point.
    marks: Sequence[tuple[float, float, str]] = ()
    dashed: bool = False
    color: str = ""
    #: Captions under the points instead of above (keeps baselines clear of versions).
    below: bool = False


@dataclass(frozen=True, slots=True)
class Axes:
    title: str
    x_label: str
    y_label: str
    x_range: tuple[float, float] | None = None
    y_range: tuple[float, float] | None = None
    notes: Sequence[str] = field(default_factory=tuple)


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 x 10^k) inside [low, high]."""
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _label(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") if value else "0"


def _range(values: Sequence[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    if high - low < 1e-9:
        low, high = low - 0.05, high + 0.05
    pad = (high - low) * 0.08
    return low - pad, high + pad


def curve_svg(axes: Axes, series: Sequence[Series]) -> str:
    """A line chart; ranges default to the data's, padded."""
    width, height = 640, 400
    left, right, top, bottom = 64, 180, 36, 52
    plot_w, plot_h = width - left - right, height - top - bottom
    xs = [x for s in series for x, _ in s.points] + [m[0] for s in series for m in s.marks]
    ys = [y for s in series for _, y in s.points] + [m[1] for s in series for m in s.marks]
    x0, x1 = axes.x_range or _range(xs or [0.0, 1.0])
    y0, y1 = axes.y_range or _range(ys or [0.0, 1.0])

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return top + plot_h - (y - y0) / (y1 - y0) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" {FONT}>',
        f"<title>{escape(axes.title)}</title>",
        f'<text x="{left + plot_w / 2:.0f}" y="20" text-anchor="middle" font-weight="bold">'
        f"{escape(axes.title)}</text>",
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
        'stroke="#888"/>',
    ]
    for x in _ticks(x0, x1):
        parts.append(
            f'<line x1="{px(x):.1f}" y1="{top}" x2="{px(x):.1f}" y2="{top + plot_h}" '
            f'stroke="#eee"/><text x="{px(x):.1f}" y="{top + plot_h + 16}" '
            f'text-anchor="middle">{_label(x)}</text>'
        )
    for y in _ticks(y0, y1):
        parts.append(
            f'<line x1="{left}" y1="{py(y):.1f}" x2="{left + plot_w}" y2="{py(y):.1f}" '
            f'stroke="#eee"/><text x="{left - 6}" y="{py(y) + 4:.1f}" '
            f'text-anchor="end">{_label(y)}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2:.0f}" y="{height - 12}" text-anchor="middle">'
        f"{escape(axes.x_label)}</text>"
        f'<text x="16" y="{top + plot_h / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 16 {top + plot_h / 2:.0f})">{escape(axes.y_label)}</text>'
    )
    for index, item in enumerate(series):
        color = item.color or PALETTE[index % len(PALETTE)]
        if len(item.points) > 1:
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in item.points)
            dash = ' stroke-dasharray="5,4"' if item.dashed else ""
            parts.append(
                f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}/>'
            )
        for x, y, caption in item.marks:
            right_half = px(x) > left + plot_w * 0.7
            anchor, dx = ("end", -7) if right_half else ("start", 7)
            dy = 17 if item.below else -7
            parts.append(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="4.5" fill="{color}"/>'
                f'<text x="{px(x) + dx:.1f}" y="{py(y) + dy:.1f}" text-anchor="{anchor}">'
                f"{escape(caption)}</text>"
            )
        legend_y = top + 14 + index * 18
        parts.append(
            f'<line x1="{width - right + 14}" y1="{legend_y - 4}" x2="{width - right + 34}" '
            f'y2="{legend_y - 4}" stroke="{color}" stroke-width="3"/>'
            f'<text x="{width - right + 40}" y="{legend_y}">{escape(item.name)}</text>'
        )
    for index, note in enumerate(axes.notes):
        parts.append(
            f'<text x="{width - right + 14}" y="{top + 30 + (len(series) + index) * 18}" '
            f'fill="#555">{escape(note)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)
