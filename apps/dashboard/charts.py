"""Plotly figures built on the server from rollups; the browser only draws them.

Figures are plain dicts in Plotly's figure schema (``{"data": [...], "layout": {...}}``),
serialised by plotly's own JSON encoder: building ``plotly.graph_objects`` would validate every
point one by one, which cost ~0.5 s on a project page with a 4-GPU, 7-day heatmap. The tests
load each figure into ``go.Figure`` to check it against the schema.

Every series is capped at ``MAX_POINTS``: selectors choose coarser buckets for longer ranges
(see ``DashboardFilters.bucket_s``) and ``downsample`` is the last line of defence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from plotly.io.json import to_json_plotly

from apps.dashboard.selectors import CapacitySeries, GpuLines, Heatmap, TrendSeries

MAX_POINTS = 2000
COLOURS = {
    "busy": "#1a7f37",
    "idle": "#cf7a00",
    "unallocated": "#b6bec8",
    "efficiency": "#0a58ca",
    "allocated": "#8c959f",
}
PALETTE = ["#0a58ca", "#1a7f37", "#cf222e", "#8250df", "#bc4c00", "#0e7490", "#6e7781", "#b35900"]


def downsample(x: Sequence, y: Sequence, *, limit: int = MAX_POINTS) -> tuple[list, list]:
    """Keep at most ``limit`` points by averaging runs of neighbours (None-aware)."""
    n = len(x)
    if n <= limit:
        return list(x), list(y)
    step = math.ceil(n / limit)
    xs, ys = [], []
    for i in range(0, n, step):
        chunk = [v for v in y[i : i + step] if v is not None]
        xs.append(x[i])
        ys.append(sum(chunk) / len(chunk) if chunk else None)
    return xs, ys


def _layout(*, y_title: str, height: int = 320, **extra) -> dict:
    return {
        "height": height,
        "margin": {"l": 56, "r": 16, "t": 12, "b": 40},
        "paper_bgcolor": "#ffffff",
        "plot_bgcolor": "#ffffff",
        "font": {"family": "system-ui, sans-serif", "size": 12, "color": "#1b1f24"},
        "xaxis": {"type": "date", "gridcolor": "#eef1f4"},
        "yaxis": {"title": {"text": y_title}, "gridcolor": "#eef1f4", "rangemode": "tozero"},
        "legend": {"orientation": "h", "y": -0.18},
        "hovermode": "x unified",
        **extra,
    }


def _bucket_label(bucket_s: int) -> str:
    if bucket_s % 86400 == 0:
        return f"{bucket_s // 86400}-day buckets" if bucket_s > 86400 else "daily buckets"
    if bucket_s % 3600 == 0:
        return f"{bucket_s // 3600}-hour buckets" if bucket_s > 3600 else "hourly buckets"
    return f"{bucket_s // 60}-minute buckets"


def capacity_figure(series: CapacitySeries) -> dict:
    fig = {"data": [], "layout": _layout(y_title=f"GPUs (mean, {_bucket_label(series.bucket_s)})")}
    parts = [("Busy", series.busy, "busy"), ("Allocated, idle", series.idle_allocated, "idle")]
    if series.unallocated is not None:
        parts.append(("Unallocated", series.unallocated, "unallocated"))
    for name, values, colour in parts:
        x, y = downsample(series.x, values)
        fig["data"].append(
            {
                "type": "scatter",
                "x": x,
                "y": y,
                "name": name,
                "stackgroup": "capacity",
                "mode": "lines",
                "line": {"width": 0.5, "color": COLOURS[colour]},
                "hovertemplate": "%{y:.1f} GPUs",
            }
        )
    return fig


def nice_axis_top(value: float, *, steps: int) -> float:
    """The smallest axis top at or above ``value`` whose ``steps`` equal steps are a round
    number (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 times a power of ten)."""
    if value <= 0:
        return float(steps)
    step = value / steps
    power = 10 ** math.floor(math.log10(step))
    for multiple in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if multiple * power >= step:
            return multiple * power * steps
    return 10 * power * steps


def trend_figure(series: TrendSeries) -> dict:
    layout = _layout(
        y_title="efficiency %",
        yaxis2={
            "title": {"text": "GPUs allocated"},
            "tickformat": ",.1~f",
            "overlaying": "y",
            "side": "right",
            "rangemode": "tozero",
            "showgrid": False,
        },
    )
    layout["yaxis"]["range"] = [0, 100]
    layout["margin"]["r"] = 56
    fig = {"data": [], "layout": layout}
    x, y = downsample(series.x, series.allocated_gpus)
    # The right axis shares the left one's five grid lines: give it a top that divides
    # into five round steps, so its labels read 10, 20, 30 rather than 10, 20.1, 30.1.
    top = nice_axis_top(max((v for v in y if v is not None), default=0.0), steps=5)
    layout["yaxis2"].update(range=[0, top], tickmode="sync")
    fig["data"].append(
        {
            "type": "bar",
            "x": x,
            "y": y,
            "name": "GPUs allocated",
            "yaxis": "y2",
            "marker": {"color": COLOURS["allocated"]},
            "opacity": 0.35,
            "hovertemplate": "%{y:.1f} GPUs",
        }
    )
    x, y = downsample(series.x, series.efficiency)
    fig["data"].append(
        {
            "type": "scatter",
            "x": x,
            "y": y,
            "name": "Efficiency",
            "mode": "lines+markers",
            "marker": {"size": 4},
            "line": {"color": COLOURS["efficiency"], "width": 2},
            "connectgaps": False,
            "hovertemplate": "%{y:.1f} %",
        }
    )
    return fig


def heatmap_figure(heatmap: Heatmap) -> dict:
    height = max(180, 60 + 22 * len(heatmap.labels))
    layout = _layout(y_title="", height=height, hovermode="closest")
    # automargin: GPU labels ("gpu-a-001/7") are wider than the default left margin.
    layout["yaxis"] = {"type": "category", "autorange": "reversed", "automargin": True}
    return {
        "data": [
            {
                "type": "heatmap",
                "x": heatmap.x[:MAX_POINTS],
                "y": heatmap.labels,
                "z": [row[:MAX_POINTS] for row in heatmap.z],
                "zmin": 0,
                "zmax": 100,
                "colorscale": [
                    [0, "#fff1e5"],
                    [0.01, "#fbd3b0"],
                    [0.25, "#9fd7a9"],
                    [1, "#0f5323"],
                ],
                "colorbar": {"title": {"text": "activity %"}, "thickness": 12},
                "hovertemplate": "%{y}<br>%{x}<br>activity %{z:.0f} %<extra></extra>",
                "hoverongaps": False,
            }
        ],
        "layout": layout,
    }


def gpu_lines_figure(lines: GpuLines, *, field: str, y_title: str, unit: str) -> dict:
    layout = _layout(y_title=y_title, height=260)
    if field == "activity":
        layout["yaxis"]["range"] = [0, 100]
    fig = {"data": [], "layout": layout}
    for i, line in enumerate(lines.series):
        x, y = downsample(lines.x, line[field])
        fig["data"].append(
            {
                "type": "scatter",
                "x": x,
                "y": y,
                "name": line["label"],
                "mode": "lines",
                "line": {"width": 1.5, "color": PALETTE[i % len(PALETTE)]},
                "connectgaps": False,
                "hovertemplate": f"%{{y:.1f}} {unit}",
            }
        )
    return fig


def figure_json(fig: dict) -> str:
    """The figure as JSON safe to put inside a ``<script type="application/json">``."""
    text = to_json_plotly(fig)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def points_in(fig: dict) -> int:
    """Most points of any one series (tests check the 2,000 cap)."""
    return max((len(trace.get("x") or ()) for trace in fig["data"]), default=0)
