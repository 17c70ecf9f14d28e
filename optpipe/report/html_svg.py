"""Building blocks of report.html: escaping, number formats, colours, scales, axes and SVG.

Shared by :mod:`optpipe.report.html` (the page and its first charts) and
:mod:`optpipe.report.html_sections` (the sections added later), so neither imports
the other's internals and the page has one look.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable
from typing import Any

PALETTE = ("#2f6fde", "#d9822b", "#2a9d8f", "#9b5de5", "#e63946", "#6c757d")


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.{max(1, digits - 1)}e}"
        return f"{value:.{digits}g}"
    return str(value)


def color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


class Scale:
    """Maps data values to pixels, linear or log10, with readable ticks."""

    def __init__(self, low: float, high: float, start: float, end: float, log: bool = False) -> None:
        self.log = log and low > 0
        if self.log:
            low, high = math.log10(low), math.log10(high)
        if high <= low:
            high = low + 1.0
        self.low, self.high, self.start, self.end = low, high, start, end

    def __call__(self, value: float) -> float:
        if self.log:
            value = math.log10(max(value, 10 ** self.low))
        return self.start + (value - self.low) / (self.high - self.low) * (self.end - self.start)

    def ticks(self) -> list[tuple[float, str]]:
        if self.log:
            out = []
            for exponent in range(math.floor(self.low), math.ceil(self.high) + 1):
                for mantissa in (1, 2, 5):
                    value = mantissa * 10.0 ** exponent
                    if self.low - 1e-9 <= math.log10(value) <= self.high + 1e-9:
                        out.append((value, fmt_tick(value)))
            if len(out) > 10:
                out = [t for t in out if t[1].startswith("1")]
            return out
        span = self.high - self.low
        step = 10 ** math.floor(math.log10(span / 5)) if span > 0 else 1.0
        for factor in (1, 2, 5, 10):
            if span / (step * factor) <= 6:
                step *= factor
                break
        first = math.ceil(self.low / step) * step
        ticks = []
        value = first
        while value <= self.high + step * 1e-6:
            ticks.append((value, fmt_tick(value)))
            value += step
        return ticks


def fmt_tick(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) < 1e-3 or abs(value) >= 1e5:
        mantissa, exponent = f"{value:.0e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return f"{value:g}"


def axis(scale: Scale, y: float, height: float, unit: str = "") -> str:
    parts = [f'<line x1="{scale.start:.1f}" y1="{y:.1f}" x2="{scale.end:.1f}" y2="{y:.1f}" stroke="#8c959f"/>']
    for value, label in scale.ticks():
        x = scale(value)
        parts.append(f'<line x1="{x:.1f}" y1="{y - height:.1f}" x2="{x:.1f}" y2="{y:.1f}" stroke="#eaeef2"/>')
        parts.append(f'<text x="{x:.1f}" y="{y + 14:.1f}" font-size="11" text-anchor="middle" '
                     f'fill="#59636e">{esc(label)}</text>')
    if unit:
        parts.append(f'<text x="{scale.end:.1f}" y="{y + 28:.1f}" font-size="11" text-anchor="end" '
                     f'fill="#59636e">{esc(unit)}</text>')
    return "".join(parts)


def svg(width: float, height: float, body: Iterable[str], label: str) -> str:
    return (f'<svg role="img" aria-label="{esc(label)}" '
            f'width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}">'
            + "".join(body) + "</svg>")
