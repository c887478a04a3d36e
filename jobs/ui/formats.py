"""How the Campaigns page writes a number, in campaign managers' words: the Jinja filters of every template.

Money (net value, spend, value per customer) with two decimals; customers and sends as whole counts;
responses (expected or measured increments of an outcome) as counts with one decimal, because they
are expectations; rates, shares and uplifts as percentages. A missing figure is a dash. The budget
control's answers and the curve's hover labels are rendered on the server with these filters too,
so the page's script never formats a number itself.
"""

from __future__ import annotations

import math

MISSING = "-"


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def money(v) -> str:
    """An amount: 1,234.50 (net value, spend, value per customer)."""
    return MISSING if _missing(v) else f"{v:,.2f}"


def per_customer(v) -> str:
    """A value per customer (a policy's net value): 0.0312."""
    return MISSING if _missing(v) else f"{v:,.4f}"


def count(v) -> str:
    """Customers, sends: 1,234."""
    return MISSING if _missing(v) else f"{int(round(v)):,}"


def responses(v) -> str:
    """Incremental responses of an outcome (an expected count): 1,234.5."""
    return MISSING if _missing(v) else f"{v:,.1f}"


def pct(v, digits: int = 1) -> str:
    """A rate, a share or an uplift as a percentage: 0.1425 -> 14.3% (digits=2: 14.25%)."""
    return MISSING if _missing(v) else f"{v * 100:,.{digits}f}%"


def ratio(v) -> str:
    """A plain ratio (a calibration slope): 0.98."""
    return MISSING if _missing(v) else f"{v:.2f}"


def interval(v: dict | None, low: str = "low", high: str = "high", kind: str = "money", **options) -> str:
    """`[low, high]` of a figure's 95% interval in the figure's own format (kind: a filter's name, with options)."""
    if not v or _missing(v.get(low)):
        return MISSING
    shown = FILTERS[kind]
    return f"[{shown(v[low], **options)}, {shown(v[high], **options)}]"


FILTERS = {
    "money": money,
    "per_customer": per_customer,
    "count": count,
    "responses": responses,
    "pct": pct,
    "ratio": ratio,
    "interval": interval,
}
