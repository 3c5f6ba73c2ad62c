"""The filters every page shares: time range, cluster and GPU model, kept in the query string.

A view is shared by copying its URL, so everything that changes what a page shows lives in
``?range=7d&cluster=...&gpu_model=...`` (or ``?range=custom&start=...&end=...``) and is parsed
here, once, with errors that name the bad parameter.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace
from urllib.parse import urlencode

from django.http import QueryDict
from django.utils import timezone

RANGES: dict[str, dt.timedelta] = {
    "24h": dt.timedelta(hours=24),
    "7d": dt.timedelta(days=7),
    "30d": dt.timedelta(days=30),
}
RANGE_LABELS = {"24h": "24 h", "7d": "7 days", "30d": "30 days", "custom": "custom"}
DEFAULT_RANGE = "7d"
# A custom range longer than this would make every chart daily and every query slow; the
# rollups keep 5-minute data for ~6 months and daily data forever, so a year is the useful span.
MAX_SPAN = dt.timedelta(days=400)
# Candidate chart bucket sizes, seconds: the smallest that keeps a series at or under
# TARGET_POINTS is used (series never exceed MAX_POINTS, see charts.py).
BUCKETS_S = (300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400)
TARGET_POINTS = 400


class FilterError(ValueError):
    """Bad filter parameters; ``errors`` lists (parameter, message) pairs."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{name}: {message}" for name, message in errors))


@dataclass(frozen=True)
class DashboardFilters:
    """What a page should show: [start, end) in UTC, optionally one cluster and one GPU model."""

    range_key: str
    start: dt.datetime
    end: dt.datetime
    cluster: str | None = None
    gpu_model: str | None = None
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def span(self) -> dt.timedelta:
        return self.end - self.start

    @property
    def start_ts(self) -> int:
        return int(self.start.timestamp())

    @property
    def end_ts(self) -> int:
        return int(self.end.timestamp())

    @property
    def label(self) -> str:
        if self.range_key == "custom":
            return f"{self.start:%Y-%m-%d %H:%M} to {self.end:%Y-%m-%d %H:%M} UTC"
        return f"last {RANGE_LABELS[self.range_key]}"

    def bucket_s(self, *, minimum: int = 300) -> int:
        """Chart bucket size for this range: coarser for longer ranges."""
        span_s = max(1, self.span.total_seconds())
        for bucket in BUCKETS_S:
            if bucket >= minimum and span_s / bucket <= TARGET_POINTS:
                return bucket
        return BUCKETS_S[-1]

    def params(self, **overrides: str | None) -> dict[str, str]:
        """The query parameters of this view, with some replaced (None drops one)."""
        values: dict[str, str | None] = {"range": self.range_key}
        if self.range_key == "custom":
            values["start"] = self.start.strftime("%Y-%m-%dT%H:%M")
            values["end"] = self.end.strftime("%Y-%m-%dT%H:%M")
        values["cluster"] = self.cluster
        values["gpu_model"] = self.gpu_model
        values.update(self.extra)
        values.update(overrides)
        if values.get("range") != "custom":
            values.pop("start", None)
            values.pop("end", None)
        return {key: value for key, value in values.items() if value}

    def query(self, **overrides: str | None) -> str:
        """``?range=...`` for links that keep the current view (empty string when default)."""
        params = self.params(**overrides)
        return "?" + urlencode(params) if params else ""

    def with_range(self, range_key: str) -> DashboardFilters:
        return replace(self, range_key=range_key)


def _parse_moment(name: str, raw: str) -> dt.datetime:
    text = raw.strip()
    try:
        if len(text) == 10:
            value = dt.datetime.combine(dt.date.fromisoformat(text), dt.time())
        else:
            value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise FilterError(
            [
                (
                    name,
                    f"expected a date or date-time like 2026-10-01 or 2026-10-01T12:00, got {raw!r}",
                )
            ]
        ) from exc
    if timezone.is_naive(value):
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def filters_parse(
    *, query: QueryDict | dict, now: dt.datetime | None = None, keep: tuple[str, ...] = ()
) -> DashboardFilters:
    """Parse ``range``, ``start``, ``end``, ``cluster`` and ``gpu_model`` from a query string.

    ``start``/``end`` alone imply ``range=custom``; an end-only range starts 7 days before it.
    ``keep`` names other parameters (``sort``) carried into links built from the result.
    Raises ``FilterError`` naming every bad parameter.
    """
    now = now or timezone.now()
    errors: list[tuple[str, str]] = []
    range_key = (query.get("range") or "").strip()
    start_raw = (query.get("start") or "").strip()
    end_raw = (query.get("end") or "").strip()
    if not range_key:
        range_key = "custom" if (start_raw or end_raw) else DEFAULT_RANGE
    if range_key not in RANGES and range_key != "custom":
        errors.append(("range", f"expected one of 24h, 7d, 30d or custom, got {range_key!r}"))
        range_key = DEFAULT_RANGE

    start = end = None
    if range_key == "custom":
        try:
            end = _parse_moment("end", end_raw) if end_raw else now
        except FilterError as exc:
            errors.extend(exc.errors)
        try:
            if start_raw:
                start = _parse_moment("start", start_raw)
            elif end is not None:
                start = end - RANGES[DEFAULT_RANGE]
        except FilterError as exc:
            errors.extend(exc.errors)
        if start is not None and end is not None:
            if start >= end:
                errors.append(("start", "must be before end"))
            elif end - start > MAX_SPAN:
                errors.append(("start", f"a range may span at most {MAX_SPAN.days} days"))
    else:
        end = now
        start = now - RANGES[range_key]

    cluster = (query.get("cluster") or "").strip() or None
    if cluster is not None:
        from apps.fleet.models import Cluster

        if not Cluster.objects.filter(slug=cluster).exists():
            errors.append(("cluster", f"no cluster with the slug {cluster!r}"))
    gpu_model = (query.get("gpu_model") or "").strip() or None
    if gpu_model is not None and len(gpu_model) > 200:
        errors.append(("gpu_model", "at most 200 characters"))

    if errors:
        raise FilterError(errors)
    extra = {name: str(query.get(name)) for name in keep if query.get(name)}
    return DashboardFilters(
        range_key=range_key,
        start=start,
        end=end,
        cluster=cluster,
        gpu_model=gpu_model,
        extra=extra,
    )
