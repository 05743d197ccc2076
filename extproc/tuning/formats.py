"""Number formats of the reports."""

from __future__ import annotations


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def count(value: float) -> str:
    return f"{value:,.0f}" if abs(value - round(value)) < 1e-9 else f"{value:,.1f}"


def ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def money(value: float | None) -> str:
    """Dollars to three significant digits: $0.0671, $0.922, $1.10, $12.3, $1,234."""
    if value is None:
        return "—"
    if round(value, 1) >= 100:
        return f"${value:,.0f}"
    return f"${value:#.3g}"
