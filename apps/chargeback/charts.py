"""The chargeback page's figure, built on the server; the browser only draws it."""

from __future__ import annotations

import plotly.graph_objects as go

PALETTE = ["#0a58ca", "#1a7f37", "#cf222e", "#8250df", "#bc4c00", "#0e7490", "#6e7781", "#b35900"]


def _lighter(hex_colour: str) -> str:
    red, green, blue = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red},{green},{blue},0.28)"


def cost_vs_busy_figure(*, history: dict, currency: str) -> go.Figure:
    """Per team and month: the cost (light bar) with the busy cost drawn inside it (solid
    bar, same slot), so the gap between them is what idle and unused GPU time cost."""
    fig = go.Figure()
    for index, (team, series) in enumerate(history["teams"].items()):
        colour = PALETTE[index % len(PALETTE)]
        fig.add_trace(
            go.Bar(
                name=f"{team}: cost",
                x=history["months"],
                y=[float(value) for value in series["cost"]],
                offsetgroup=str(index),
                legendgroup=team,
                marker={"color": _lighter(colour), "line": {"color": colour, "width": 1}},
                hovertemplate=f"{team}<br>cost %{{y:,.2f}} {currency}<extra></extra>",
            )
        )
        fig.add_trace(
            go.Bar(
                name=f"{team}: busy cost",
                x=history["months"],
                y=[float(value) for value in series["busy_cost"]],
                offsetgroup=str(index),
                legendgroup=team,
                marker={"color": colour},
                hovertemplate=f"{team}<br>busy cost %{{y:,.2f}} {currency}<extra></extra>",
            )
        )
    fig.update_layout(
        barmode="group",
        height=340,
        margin={"l": 64, "r": 16, "t": 12, "b": 40},
        paper_bgcolor="#ffffff",
        plot_bgcolor="#ffffff",
        font={"family": "system-ui, sans-serif", "size": 12, "color": "#1b1f24"},
        xaxis={"type": "category", "title": {"text": "billing month"}},
        yaxis={"title": {"text": currency}, "gridcolor": "#eef1f4", "rangemode": "tozero"},
        legend={"orientation": "h", "y": -0.22},
    )
    return fig


def figure_json(fig: go.Figure) -> str:
    """The figure as JSON that is safe inside ``<script type="application/json">`` (team
    names are user input)."""
    text = fig.to_json()
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
