"""Reads of the rollups: pooled efficiency and cost by team, project, allocation or GPU.

``efficiency_by`` answers by allocation or GPU from ``AllocationGpuHourly`` (one row per
allocation x GPU x hour); by team or project from the per-project sums of those same rows,
kept by the rollup in the same transaction: ``UsageDaily`` for the whole UTC days of the
range and ``UsageHourly`` for the hours of the partial days at its ends. Hours are whole: an
hour belongs to the range when it *starts* inside ``[start, end)`` (the same rule as
chargeback statements), so a range from 10:30 to 12:30 counts the hours 11:00 and 12:00 in
full and nothing of 10:00.
Cost is allocated GPU-hours x the GPU's rate on the UTC day of each hour (MIG instances at
their fraction of the parent's price); sums stay ``Decimal`` and are rounded to cents once.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import EmptyResultSet
from django.db import connection
from django.db.models import F, Min, Q, QuerySet, Sum
from django.utils import timezone

from apps.fleet.models import Cluster, Gpu, Node
from apps.telemetry.models import AllocationGpuHourly, UsageDaily, UsageHourly
from apps.tenancy.models import Allocation, Project

if TYPE_CHECKING:
    from apps.chargeback.selectors import RateLookup

GROUPS = ("team", "project", "allocation", "gpu")
CENT = Decimal("0.01")
HOUR_S = 3600
DAY_S = 86400
_EPOCH_DAY = dt.date(1970, 1, 1)
# Groups that whole days can be read for from UsageDaily (it has no allocation or GPU), and
# the key of each from an allocation or a UsageDaily row.
_DAILY_KEY_FIELDS = {"team": "project__team__slug", "project": "project__slug"}


@dataclass(frozen=True)
class EfficiencyRow:
    """One group's pooled figures, exactly the fields of the efficiency API contract.

    ``key`` is the team or project slug, the allocation id or the GPU UUID.
    """

    key: Any
    allocated_gpu_hours: float
    observed_gpu_hours: float
    busy_gpu_hours: float
    idle_gpu_hours: float
    memory_held_idle_gpu_hours: float
    efficiency: float | None
    cost: Decimal
    idle_cost: Decimal


def _dec(value: float | None) -> Decimal:
    return Decimal(repr(float(value or 0.0)))


def _ceil(value: int, step: int) -> int:
    return -(-value // step) * step


# One group's sums before pricing: (key, day number, model, MIG profile, cluster id) and the
# five second counts. Pricing needs the day, model, profile and cluster of every sum.
_Group = tuple[Any, int, str, str, int, float, float, float, float, float]


def _hourly_groups(
    *,
    group: str,
    lo: int,
    hi: int,
    projects: QuerySet[Project] | None,
    cluster: str | None,
    gpu_model: str | None,
) -> list[_Group]:
    """Sums by allocation or GPU of the ``AllocationGpuHourly`` rows whose hour starts in
    ``[lo, hi)`` (teams and projects read the usage rollups instead).

    The rows are summed per (allocation, GPU, day) first, on integer columns, and only those
    few sums are joined to their GPU, node and cluster: joining every hourly row and grouping
    them by text was most of a page's time. One statement, the same on PostgreSQL and SQLite
    (the ORM cannot join onto an aggregate)."""
    hourly, gpu, node = (m._meta.db_table for m in (AllocationGpuHourly, Gpu, Node))
    cluster_table = Cluster._meta.db_table
    params: list[Any] = [lo, hi]
    where = ["h.hour >= %s AND h.hour < %s"]
    if projects is not None:
        # Django writes the visibility subquery (it may be DISTINCT, ordered, or empty).
        try:
            sub_sql, sub_params = (
                Allocation.objects.filter(project__in=projects).values("pk").query.sql_with_params()
            )
        except EmptyResultSet:
            return []
        where.append(f"h.allocation_id IN ({sub_sql})")
        params += list(sub_params)
    outer: list[str] = []
    outer_params: list[Any] = []
    if cluster:
        outer.append("c.slug = %s")
        outer_params.append(cluster)
    if gpu_model:
        outer.append("COALESCE(parent.model_name, g.model_name) = %s")
        outer_params.append(gpu_model)
    key = {"allocation": "s.allocation_id", "gpu": "g.uuid"}
    sql = f"""
        SELECT {key[group]}, s.day, COALESCE(parent.model_name, g.model_name), g.mig_profile,
               n.cluster_id, SUM(s.allocated), SUM(s.observed), SUM(s.busy), SUM(s.idle),
               SUM(s.held)
        FROM (
            SELECT h.allocation_id, h.gpu_id, h.hour / {DAY_S} AS day,
                   SUM(h.allocated_s) AS allocated, SUM(h.observed_s) AS observed,
                   SUM(h.busy_s) AS busy, SUM(h.idle_s) AS idle,
                   SUM(h.mem_held_idle_s) AS held
            FROM {hourly} h
            WHERE {" AND ".join(where)}
            GROUP BY h.allocation_id, h.gpu_id, h.hour / {DAY_S}
        ) s
        JOIN {gpu} g ON g.id = s.gpu_id
        LEFT JOIN {gpu} parent ON parent.id = g.mig_parent_id
        JOIN {node} n ON n.id = g.node_id
        JOIN {cluster_table} c ON c.id = n.cluster_id
        {"WHERE " + " AND ".join(outer) if outer else ""}
        GROUP BY {key[group]}, s.day, COALESCE(parent.model_name, g.model_name), g.mig_profile,
                 n.cluster_id
    """  # noqa: S608 - only table names and constants are formatted in
    with connection.cursor() as cursor:
        cursor.execute(sql, params + outer_params)
        return [
            (key_value, int(day), model, mig_profile, cluster_id, *(v or 0.0 for v in sums))
            for key_value, day, model, mig_profile, cluster_id, *sums in cursor.fetchall()
        ]


# The seconds every usage rollup row carries, summed in this order into a ``_Group``.
_USAGE_SECONDS = ("allocated_s", "observed_s", "busy_s", "idle_s", "mem_held_idle_s")


def _usage_rows_filtered(
    rows: QuerySet,
    *,
    projects: QuerySet[Project] | None,
    cluster: str | None,
    gpu_model: str | None,
) -> QuerySet:
    """``UsageDaily`` or ``UsageHourly`` rows narrowed to the visible projects, a cluster and
    a GPU model (each only when given)."""
    if projects is not None:
        rows = rows.filter(project__in=projects)
    if cluster:
        rows = rows.filter(cluster__slug=cluster)
    if gpu_model:
        rows = rows.filter(gpu_model=gpu_model)
    return rows


def _daily_groups(
    *,
    group: str,
    first_day: int,
    end_day: int,
    projects: QuerySet[Project] | None,
    cluster: str | None,
    gpu_model: str | None,
) -> list[_Group]:
    """The same sums for the whole UTC days ``[first_day, end_day)`` (day numbers), read from
    ``UsageDaily`` (one row per day x project x cluster x model x MIG profile, each the sum of
    exactly the hourly rows of that day ``_hourly_groups`` would group together), summed over
    the days: the caller passes a span in which no price changes, so one price per group
    costs the same as one per day (returned under ``first_day``)."""
    rows = UsageDaily.objects.filter(
        day__gte=_EPOCH_DAY + dt.timedelta(days=first_day),
        day__lt=_EPOCH_DAY + dt.timedelta(days=end_day),
    )
    rows = _usage_rows_filtered(rows, projects=projects, cluster=cluster, gpu_model=gpu_model)
    # The project's team now, not the stored ``team`` column, as the hourly path does.
    key_field = _DAILY_KEY_FIELDS[group]
    grouped = (
        rows.values_list(key_field, "gpu_model", "mig_profile", "cluster_id")
        .annotate(*(Sum(name) for name in _USAGE_SECONDS))
        .order_by()
    )
    return [
        (key, first_day, model, mig_profile, cluster_id, *(v or 0.0 for v in sums))
        for key, model, mig_profile, cluster_id, *sums in grouped
    ]


def _usage_hourly_groups(
    *,
    group: str,
    spans: list[tuple[int, int]],
    projects: QuerySet[Project] | None,
    cluster: str | None,
    gpu_model: str | None,
) -> list[_Group]:
    """The same sums as ``_hourly_groups`` for teams and projects, read from ``UsageHourly``
    (each row the sum of one hour's rows of a project x cluster x model x MIG profile)."""
    if not spans:
        return []
    in_spans = Q()
    for lo, hi in spans:
        in_spans |= Q(hour__gte=lo, hour__lt=hi)
    rows = UsageHourly.objects.filter(in_spans)
    rows = _usage_rows_filtered(rows, projects=projects, cluster=cluster, gpu_model=gpu_model)
    grouped = (
        rows.annotate(day=F("hour") / DAY_S)
        .values_list(_DAILY_KEY_FIELDS[group], "day", "gpu_model", "mig_profile", "cluster_id")
        .annotate(*(Sum(name) for name in _USAGE_SECONDS))
        .order_by()
    )
    return [
        (key, int(day), model, mig_profile, cluster_id, *(v or 0.0 for v in sums))
        for key, day, model, mig_profile, cluster_id, *sums in grouped
    ]


def _price_periods(*, days: list[int], rates: RateLookup) -> list[tuple[int, int]]:
    """Consecutive ``days`` cut into [first, end) spans at every date some price changes."""
    first, end = days[0], days[-1] + 1
    cuts = sorted(
        {(day - _EPOCH_DAY).days for day in rates.effective_dates()} & set(range(first + 1, end))
    )
    bounds = [first, *cuts, end]
    return list(itertools.pairwise(bounds))


def _hours_exist(*, lo: int, hi: int) -> bool:
    """Whether any hourly row starts in [lo, hi). ``MIN`` over one range is always one probe
    of the hour index; an ``EXISTS`` over two OR-ed ranges was planned as a scan (90 ms)."""
    found = AllocationGpuHourly.objects.filter(hour__gte=lo, hour__lt=hi).aggregate(m=Min("hour"))
    return found["m"] is not None


def _days_and_hours(*, lo: int, hi: int) -> tuple[list[int], list[tuple[int, int]]]:
    """Split the hours ``[lo, hi)`` into UTC days read from ``UsageDaily`` (consecutive day
    numbers) and spans read hour by hour (from ``UsageHourly``).

    Whole days always come from ``UsageDaily``. A partial day at either end does too when no
    hourly row exists in its part outside the range (then its daily rows hold exactly the
    range's part): today's part of a range ending now, as every page's range does. Only
    days younger than the hourly retention qualify (pruning empties a day's early hours
    while its daily rows keep them)."""
    days: list[int] = []
    spans: list[tuple[int, int]] = []
    if lo >= hi:
        return days, spans
    horizon = int(timezone.now().timestamp()) - settings.FLOPWATCH_HOURLY_RETENTION_DAYS * DAY_S
    for day in range(lo // DAY_S, _ceil(hi, DAY_S) // DAY_S):
        day_lo, day_hi = day * DAY_S, (day + 1) * DAY_S
        part = (max(lo, day_lo), min(hi, day_hi))
        if part == (day_lo, day_hi):
            days.append(day)
            continue
        outside = [(a, b) for a, b in ((day_lo, part[0]), (part[1], day_hi)) if a < b]
        if day_lo >= horizon and not any(_hours_exist(lo=a, hi=b) for a, b in outside):
            days.append(day)
        else:
            spans.append(part)
    return days, spans


def efficiency_by(
    *,
    group: str,
    start: dt.datetime,
    end: dt.datetime,
    projects: QuerySet[Project] | None = None,
    cluster: str | None = None,
    gpu_model: str | None = None,
    rates: RateLookup | None = None,
) -> list[EfficiencyRow]:
    """Pooled efficiency (busy / observed allocated GPU-seconds) and cost per group over the
    hours starting in ``[start, end)``; ``projects`` limits to what a user may see (None =
    everything), ``cluster`` is a cluster slug, ``gpu_model`` a model name (a MIG instance
    counts as its parent's model). Rows sorted by key. ``rates``: a rate card already loaded
    (a page asking for several ranges loads it once).

    By team or project, the whole UTC days of the range come from ``UsageDaily`` and the
    partial days at its ends from ``UsageHourly`` (see ``_days_and_hours``): a 30-day range
    then reads ~30 rows per project instead of ~720 per allocated GPU. Each (group, day,
    model, profile, cluster) sum comes whole from one table, so prices apply to the same
    sums either way."""
    from apps.chargeback.selectors import RateLookup

    if group not in GROUPS:
        raise ValueError(f"group: expected one of {', '.join(GROUPS)}, got {group!r}")
    if start >= end:
        raise ValueError("start must be before end")
    # Hour starts inside [start, end) are exactly the multiples of an hour in [lo, hi).
    lo = _ceil(int(start.timestamp()), HOUR_S)
    hi = _ceil(int(end.timestamp()), HOUR_S)
    filters = {"group": group, "projects": projects, "cluster": cluster, "gpu_model": gpu_model}
    rates = rates or RateLookup.load()
    items: list[_Group] = []
    if group in _DAILY_KEY_FIELDS:
        days, spans = _days_and_hours(lo=lo, hi=hi)
        if days:
            for first_day, end_day in _price_periods(days=days, rates=rates):
                items += _daily_groups(first_day=first_day, end_day=end_day, **filters)
        items += _usage_hourly_groups(spans=spans, **filters)
    elif lo < hi:
        items += _hourly_groups(lo=lo, hi=hi, **filters)
    seconds: dict[Any, list[float]] = defaultdict(lambda: [0.0] * 5)
    money: dict[Any, list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
    for key, day_number, model, mig_profile, cluster_id, *sums in items:
        rate = rates.gpu_rate(
            model_name=model,
            mig_profile=mig_profile,
            cluster_id=cluster_id,
            day=_EPOCH_DAY + dt.timedelta(days=day_number),
        )
        acc = seconds[key]
        for i, value in enumerate(sums):
            acc[i] += value
        money[key][0] += _dec(sums[0]) * rate / 3600
        money[key][1] += _dec(sums[3]) * rate / 3600
    out = []
    for key in sorted(seconds, key=lambda k: (str(type(k)), k)):
        allocated, observed, busy, idle, held = seconds[key]
        out.append(
            EfficiencyRow(
                key=key,
                allocated_gpu_hours=allocated / 3600,
                observed_gpu_hours=observed / 3600,
                busy_gpu_hours=busy / 3600,
                idle_gpu_hours=idle / 3600,
                memory_held_idle_gpu_hours=held / 3600,
                efficiency=(busy / observed) if observed > 0 else None,
                cost=money[key][0].quantize(CENT),
                idle_cost=money[key][1].quantize(CENT),
            )
        )
    return out
