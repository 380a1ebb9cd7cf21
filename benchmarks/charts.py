"""Small PNG line charts drawn with Pillow (matplotlib is not a dependency of this project)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

Series = Mapping[str, Sequence[tuple[float, float]]]
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")
DASHED_SUFFIX = " (dashed)"
W, H = 900, 520
LEFT, RIGHT, TOP, BOTTOM = 90, 90, 60, 150


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if value <= step * exp:
            return step * exp
    return 10 * exp


def _dashed(draw: ImageDraw.ImageDraw, a: tuple[float, float], b: tuple[float, float], colour: str) -> None:
    length = math.dist(a, b)
    if length == 0:
        return
    dash, gap = 10.0, 6.0
    t = 0.0
    while t < length:
        end = min(t + dash, length)
        p = (a[0] + (b[0] - a[0]) * t / length, a[1] + (b[1] - a[1]) * t / length)
        q = (a[0] + (b[0] - a[0]) * end / length, a[1] + (b[1] - a[1]) * end / length)
        draw.line([p, q], fill=colour, width=3)
        t = end + gap


def line_chart(path: Path, title: str, x_label: str, y_label: str, series: Series, note: str = "") -> Path:
    """One chart: x and y axes from 0, a point marker and its value at every measurement."""
    image = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=14)
    title_font = ImageFont.load_default(size=18)
    points = [p for values in series.values() for p in values]
    x_max = _nice_max(max((x for x, _ in points), default=1.0))
    y_max = _nice_max(max((y for _, y in points), default=1.0) * 1.1)
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM

    def at(x: float, y: float) -> tuple[float, float]:
        return LEFT + plot_w * x / x_max, TOP + plot_h * (1 - y / y_max)

    draw.text((LEFT, 18), title, fill="black", font=title_font)
    for i in range(6):
        y = y_max * i / 5
        _, py = at(0, y)
        draw.line([(LEFT, py), (W - RIGHT, py)], fill="#e6e6e6")
        draw.text((LEFT - 8, py), f"{y:g}", fill="black", font=font, anchor="rm")
    xs = sorted({x for x, _ in points})
    for x in xs:
        px, _ = at(x, 0)
        draw.line([(px, TOP), (px, TOP + plot_h)], fill="#f0f0f0")
        draw.text((px, TOP + plot_h + 8), f"{x:,.0f}", fill="black", font=font, anchor="mt")
    draw.line([(LEFT, TOP), (LEFT, TOP + plot_h), (W - RIGHT, TOP + plot_h)], fill="black", width=2)
    draw.text((LEFT + plot_w / 2, TOP + plot_h + 30), x_label, fill="black", font=font, anchor="mt")
    draw.text((12, TOP - 22), y_label, fill="black", font=font)
    legend_y = H - BOTTOM + 60
    for index, (name, values) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        ordered = sorted(values)
        dashed = name.endswith(DASHED_SUFFIX)
        for a, b in itertools.pairwise(ordered):
            if dashed:
                _dashed(draw, at(*a), at(*b), colour)
            else:
                draw.line([at(*a), at(*b)], fill=colour, width=3)
        for x, y in ordered:
            px, py = at(x, y)
            draw.ellipse([px - 5, py - 5, px + 5, py + 5], fill=colour)
            # Alternate label sides so series that run close together stay readable.
            step = 16 * (index // 2)
            if index % 2 == 0:
                draw.text((px + 7, py - 6 - step), f"{y:,.0f}", fill=colour, font=font, anchor="ld")
            else:
                draw.text((px + 7, py + 6 + step), f"{y:,.0f}", fill=colour, font=font, anchor="lt")
        column, row = index % 2, index // 2
        lx, ly = LEFT + column * (plot_w / 2), legend_y + row * 22
        draw.line([(lx, ly + 8), (lx + 30, ly + 8)], fill=colour, width=3)
        draw.text((lx + 38, ly), name, fill="black", font=font)
    if note:
        draw.text((LEFT, H - 22), note, fill="#555555", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=True)
    return path
