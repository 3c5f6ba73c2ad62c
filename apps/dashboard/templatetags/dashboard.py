"""Number formatting for the pages: every figure with its unit, efficiency with its band."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from django import template
from django.conf import settings
from django.utils.html import format_html

register = template.Library()

# Efficiency bands: below 25 % is what the low_efficiency rule flags (DESIGN.md); 50 % and up
# is a well-used GPU for typical training and inference mixes.
BAND_BAD_BELOW = 0.25
BAND_GOOD_FROM = 0.50
CURRENCY_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "CHF": "CHF ", "JPY": "¥"}


@register.filter
def eff_class(value) -> str:
    """CSS class of an efficiency ratio (0..1): eff-good, eff-warn or eff-bad."""
    if value is None or value == "":
        return "eff-none"
    value = float(value)
    if value < BAND_BAD_BELOW:
        return "eff-bad"
    if value < BAND_GOOD_FROM:
        return "eff-warn"
    return "eff-good"


@register.filter
def pct(value, digits: int = 1) -> str:
    """A ratio 0..1 as a percentage ("—" when unknown)."""
    if value is None or value == "":
        return "—"
    return f"{float(value) * 100:.{int(digits)}f} %"


@register.filter
def eff_badge(value):
    """An efficiency ratio as a coloured badge with a band name for screen readers."""
    css = eff_class(value)
    band = {"eff-good": "good", "eff-warn": "fair", "eff-bad": "poor", "eff-none": "no data"}[css]
    return format_html(
        '<span class="eff {}" title="efficiency: {}">{}</span>', css, band, pct(value)
    )


@register.filter
def gpu_hours(value) -> str:
    if value is None or value == "":
        return "—"
    value = float(value)
    if abs(value) >= 100:
        return f"{value:,.0f} GPU-h"
    return f"{value:,.1f} GPU-h"


@register.filter
def money(value) -> str:
    if value is None or value == "":
        return "—"
    amount = Decimal(value).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    currency = settings.FLOPWATCH_CURRENCY
    symbol = CURRENCY_SYMBOLS.get(currency)
    sign = "-" if amount < 0 else ""
    if symbol:
        return f"{sign}{symbol}{abs(amount):,.2f}"
    return f"{sign}{abs(amount):,.2f} {currency}"


@register.filter
def gib(value) -> str:
    if value is None or value == "":
        return "—"
    return f"{float(value):,.1f} GiB"


@register.filter
def watts(value) -> str:
    if value is None or value == "":
        return "—"
    return f"{float(value):,.0f} W"


@register.filter
def duration(seconds) -> str:
    if seconds is None:
        return "—"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min"


@register.simple_tag(takes_context=True)
def qs(context, **overrides) -> str:
    """The current filters' query string with some parameters replaced."""
    filters = context.get("filters")
    if filters is None:
        return ""
    return filters.query(**{k: (None if v == "" else v) for k, v in overrides.items()})


@register.simple_tag
def plotly_js_url() -> str:
    """URL of plotly.min.js served from the installed plotly package (versioned, cacheable)."""
    import plotly
    from django.urls import reverse

    return reverse("plotly-js", kwargs={"version": plotly.__version__})


@register.simple_tag(takes_context=True)
def nav_sees_fleet(context) -> bool:
    """Whether the navigation shows Fleet: roles that see every team (admins, finance)."""
    from apps.tenancy.selectors import user_sees_all_teams

    request = context.get("request")
    return bool(request) and user_sees_all_teams(user=request.user)


@register.filter
def get_item(mapping, key):
    return mapping.get(key)
