"""Chart figures: plain Plotly dicts whose axes read well."""

from __future__ import annotations

import datetime as dt

import pytest

from apps.dashboard.charts import heatmap_figure, nice_axis_top, trend_figure
from apps.dashboard.selectors import Heatmap, TrendSeries


@pytest.mark.parametrize(
    ("value", "top"),
    [(0, 5), (0.3, 0.3), (1, 1), (4.7, 5), (47, 50), (50.2, 60), (51, 60), (128, 150)],
)
def test_axis_top_divides_into_round_steps(value, top):
    assert nice_axis_top(value, steps=5) == pytest.approx(top)


def test_trend_right_axis_has_round_labels_aligned_with_the_left_grid():
    start = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    series = TrendSeries(
        bucket_s=3600,
        x=[start + dt.timedelta(hours=h) for h in range(3)],
        efficiency=[50.0, None, 60.0],
        allocated_gpus=[12.0, 47.3, 30.0],
    )
    y2 = trend_figure(series)["layout"]["yaxis2"]
    assert y2["range"] == [0, 50]
    assert y2["tickmode"] == "sync"


def test_heatmap_labels_get_the_room_they_need():
    heatmap = Heatmap(bucket_s=300, x=[], labels=["gpu-a-001/7"], z=[[]], truncated=0)
    assert heatmap_figure(heatmap)["layout"]["yaxis"]["automargin"] is True
