"""The run page's budget curve as an inline SVG: where each point of the gate's curve is drawn.

The curve is the gate's (<reports>/run_date=<ds>/budget_curve.csv, the file `uplift audience show`
reads for its peak): net value against sends with its 95% band. This module only places it on a
canvas; the template draws it and the page's script shows a point's figures on hover.
"""

from __future__ import annotations

import math

WIDTH, HEIGHT = 560, 260
LEFT, RIGHT, TOP, BOTTOM = 70, 16, 14, 34  # margins for the axes' labels
TICKS = 5


def nice_step(span: float) -> float:
    """A round step (1, 2, 2.5 or 5 times a power of ten) that cuts span into about TICKS parts."""
    raw = span / TICKS if span > 0 else 1.0
    power = 10 ** math.floor(math.log10(raw))
    return next(k * power for k in (1, 2, 2.5, 5, 10) if k * power >= raw)


def ticks(low: float, high: float) -> list[float]:
    """Round values from low to high, a nice_step apart."""
    step = nice_step(high - low)
    first = math.ceil(low / step)
    return [k * step for k in range(first, math.floor(high / step) + 1)]


def curve_chart(curve: list[dict]) -> dict | None:
    """Pixel positions of the curve's points, its band and its axes' ticks (values, for the template to format)."""
    if len(curve) < 2:
        return None
    most = max(p["sends"] for p in curve) or 1
    low = min(0.0, *(p["net_value_low"] for p in curve))
    high = max(0.0, *(p["net_value_high"] for p in curve))
    span = (high - low) or 1.0
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(sends: float) -> float:
        return round(LEFT + inner_w * sends / most, 1)

    def y(value: float) -> float:
        return round(TOP + inner_h * (high - value) / span, 1)

    points = [{**p, "x": x(p["sends"]), "y": y(p["net_value"])} for p in curve]
    upper = [f"{x(p['sends'])},{y(p['net_value_high'])}" for p in curve]
    lower = [f"{x(p['sends'])},{y(p['net_value_low'])}" for p in reversed(curve)]
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "left": LEFT,
        "right": WIDTH - RIGHT,
        "top": TOP,
        "bottom": HEIGHT - BOTTOM,
        "zero": y(0.0),
        "most": most,
        "points": points,
        "line": " ".join(f"{p['x']},{p['y']}" for p in points),
        "band": " ".join(upper + lower),
        "x_ticks": [{"at": x(v), "value": v} for v in ticks(0, most)],
        "y_ticks": [{"at": y(v), "value": v} for v in ticks(low, high)],
    }
