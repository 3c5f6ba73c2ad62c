"""Reads behind the pages. Every efficiency, GPU-hour and cost figure comes from
``apps.telemetry.selectors.efficiency_by`` (the same function the efficiency API answers
from), so a page and the API never disagree for the same range; the rest (charts, current
state) reads the rollup tables directly, always through the visibility selectors.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.core.exceptions import EmptyResultSet
from django.db import connection
from django.db.models import Avg, Count, F, Max, Q, QuerySet, Sum
from django.utils import timezone

from apps.chargeback.selectors import RateLookup
from apps.dashboard.filters import DashboardFilters
from apps.fleet.models import Cluster, Gpu, Node
from apps.telemetry.models import (
    AllocationGpuHourly,
    CapacityDaily,
    GpuRollup5m,
    UsageDaily,
    UsageHourly,
)
from apps.telemetry.rollups import spans_union
from apps.telemetry.selectors import efficiency_by
from apps.tenancy.models import Allocation, AllocationGpu, Project, Team

logger = logging.getLogger(__name__)

ZERO = Decimal("0")
CENT = Decimal("0.01")
# A GPU counts as busy "now" when its latest 5-minute bucket had at least this activity
# (the idle threshold of DESIGN.md); "now" is the newest bucket within this many seconds.
BUSY_THRESHOLD = 0.01
RECENT_S = 15 * 60


# --- Efficiency: the one source of page numbers -----------------------------------------------


def efficiency_rows(
    *,
    group: str,
    filters: DashboardFilters,
    projects: QuerySet[Project] | None,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    rates: RateLookup | None = None,
) -> list:
    return efficiency_by(
        group=group,
        start=start or filters.start,
        end=end or filters.end,
        projects=projects,
        cluster=filters.cluster,
        gpu_model=filters.gpu_model,
        rates=rates,
    )


@dataclass(frozen=True)
class Totals:
    """Pooled totals of efficiency rows (pooled over GPU-seconds, never a mean of means)."""

    allocated_gpu_hours: float = 0.0
    observed_gpu_hours: float = 0.0
    busy_gpu_hours: float = 0.0
    idle_gpu_hours: float = 0.0
    memory_held_idle_gpu_hours: float = 0.0
    cost: Decimal = ZERO
    idle_cost: Decimal = ZERO

    @property
    def efficiency(self) -> float | None:
        if self.observed_gpu_hours <= 0:
            return None
        return self.busy_gpu_hours / self.observed_gpu_hours

    @property
    def has_data(self) -> bool:
        return self.allocated_gpu_hours > 0


def totals_of(rows: Iterable) -> Totals:
    allocated = observed = busy = idle = held = 0.0
    cost = idle_cost = ZERO
    for row in rows:
        allocated += row.allocated_gpu_hours
        observed += row.observed_gpu_hours
        busy += row.busy_gpu_hours
        idle += row.idle_gpu_hours
        held += row.memory_held_idle_gpu_hours
        cost += Decimal(row.cost)
        idle_cost += Decimal(row.idle_cost)
    return Totals(allocated, observed, busy, idle, held, cost, idle_cost)


def row_for(rows_by_key: dict[str, Any], *candidates: Any):
    """The efficiency row of an object, whichever identifier the rows are keyed by."""
    for candidate in candidates:
        row = rows_by_key.get(str(candidate))
        if row is not None:
            return row
    return None


def rows_by_key(rows: Iterable) -> dict[str, Any]:
    return {str(row.key): row for row in rows}


# --- Filters applied to fleet objects -----------------------------------------------------------


def _gpus_filtered(gpus: QuerySet[Gpu], filters: DashboardFilters) -> QuerySet[Gpu]:
    if filters.cluster:
        gpus = gpus.filter(node__cluster__slug=filters.cluster)
    if filters.gpu_model:
        gpus = gpus.filter(model_name=filters.gpu_model)
    return gpus


def gpu_models_known() -> list[str]:
    return list(Gpu.objects.order_by("model_name").values_list("model_name", flat=True).distinct())


def clusters_known() -> list[Cluster]:
    return list(Cluster.objects.all())


# --- "Now": GPUs total, allocated, busy -------------------------------------------------------


@dataclass(frozen=True)
class GpuNow:
    total: int
    allocated: int
    busy: int
    reporting: int


_LATEST_FIELDS = ("gpu_id", "bucket", "covered_s", "busy_s", "mem_used_mean_mib", "power_mean_w")


def _latest_rollups(
    *, gpu_ids: Iterable[int] | QuerySet | None, now: dt.datetime
) -> dict[int, dict]:
    """The newest 5-minute rollup of each GPU within the last ``RECENT_S`` seconds, as dicts
    (plain values, not model instances: the fleet table reads one per GPU every few seconds).

    The database picks each GPU's newest bucket (MAX per GPU, then one probe of the (GPU,
    bucket) index each) rather than Python walking every bucket of those minutes."""
    since = int(now.timestamp()) - RECENT_S
    # Rows with samples only: a bucket that has just begun can hold nothing but the time
    # spilling over from the previous one's last sample, with no memory or power figures.
    newest = GpuRollup5m.objects.filter(bucket__gte=since, samples__gt=0)
    if gpu_ids is not None:
        newest = newest.filter(
            gpu_id__in=gpu_ids if isinstance(gpu_ids, QuerySet) else list(gpu_ids)
        )
    try:
        sub_sql, params = (
            newest.values("gpu_id").annotate(m=Max("bucket")).order_by().query.sql_with_params()
        )
    except EmptyResultSet:
        return {}
    table = GpuRollup5m._meta.db_table
    columns = ", ".join(f"r.{name}" for name in _LATEST_FIELDS)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {columns} FROM {table} r JOIN ({sub_sql}) l "  # noqa: S608 - our SQL
            "ON r.gpu_id = l.gpu_id AND r.bucket = l.m",
            params,
        )
        return {row[0]: dict(zip(_LATEST_FIELDS, row, strict=True)) for row in cursor.fetchall()}


def activity_of(row: dict | None) -> float | None:
    if row is None or not row["covered_s"]:
        return None
    return min(1.0, row["busy_s"] / row["covered_s"])


def gpus_now(
    *, gpus: QuerySet[Gpu], filters: DashboardFilters, now: dt.datetime | None = None
) -> GpuNow:
    now = now or timezone.now()
    gpus = _gpus_filtered(gpus, filters)
    # Subqueries, not lists of a thousand ids: the allocations held now come first (through
    # the end index), then their GPUs, instead of probing every allocation link.
    held_now = Allocation.objects.filter(start__lte=now).filter(
        Q(end__isnull=True) | Q(end__gt=now)
    )
    held = set(
        AllocationGpu.objects.filter(allocation__in=held_now, gpu__in=gpus).values_list(
            "gpu_id", flat=True
        )
    )
    latest = _latest_rollups(gpu_ids=gpus.values("id"), now=now)
    busy = sum(1 for row in latest.values() if (activity_of(row) or 0) >= BUSY_THRESHOLD)
    return GpuNow(total=gpus.count(), allocated=len(held), busy=busy, reporting=len(latest))


# --- Charts over time --------------------------------------------------------------------------


@dataclass(frozen=True)
class CapacitySeries:
    """Average GPUs busy / allocated but idle / unallocated per bucket (unallocated is None
    for users who do not see the whole fleet)."""

    bucket_s: int
    x: list[dt.datetime]
    busy: list[float]
    idle_allocated: list[float]
    unallocated: list[float] | None


def _bucket_range(start_ts: int, end_ts: int, bucket_s: int) -> list[int]:
    first = start_ts - start_ts % bucket_s
    return list(range(first, end_ts, bucket_s))


def _epoch(ts: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC)


def capacity_series(
    *, filters: DashboardFilters, projects: QuerySet[Project] | None, whole_fleet: bool
) -> CapacitySeries:
    """Busy, idle-allocated and unallocated GPUs over the range.

    Hourly usage rollups below a day's bucket, daily ones above: a 30-day chart then reads
    ~30 rows per project instead of 720 per GPU (this page must stay fast). A MIG instance
    counts under its parent's model in both, as in ``efficiency_by``.
    """
    bucket_s = filters.bucket_s(minimum=3600)
    start_ts, end_ts = filters.start_ts, filters.end_ts
    buckets = _bucket_range(start_ts, end_ts, bucket_s)
    busy: dict[int, float] = defaultdict(float)
    allocated: dict[int, float] = defaultdict(float)
    capacity: dict[int, float] = defaultdict(float)
    if bucket_s >= 86400:
        first_day = _epoch(start_ts - start_ts % 86400).date()
        usage = UsageDaily.objects.filter(
            day__gte=first_day, day__lt=filters.end.date() + dt.timedelta(days=1)
        )
        if projects is not None:
            usage = usage.filter(project__in=projects)
        if filters.cluster:
            usage = usage.filter(cluster__slug=filters.cluster)
        if filters.gpu_model:
            usage = usage.filter(gpu_model=filters.gpu_model)
        for item in usage.values("day").annotate(b=Sum("busy_s"), a=Sum("allocated_s")):
            ts = int(dt.datetime.combine(item["day"], dt.time(), tzinfo=dt.UTC).timestamp())
            key = ts - (ts - buckets[0]) % bucket_s if buckets else ts
            busy[key] += item["b"] or 0.0
            allocated[key] += item["a"] or 0.0
        if whole_fleet:
            cap = CapacityDaily.objects.filter(day__gte=first_day, day__lte=filters.end.date())
            if filters.cluster:
                cap = cap.filter(cluster__slug=filters.cluster)
            if filters.gpu_model:
                cap = cap.filter(gpu_model=filters.gpu_model)
            for item in cap.values("day").annotate(c=Sum("capacity_s")):
                ts = int(dt.datetime.combine(item["day"], dt.time(), tzinfo=dt.UTC).timestamp())
                key = ts - (ts - buckets[0]) % bucket_s if buckets else ts
                capacity[key] += item["c"] or 0.0
    else:
        # Per-project hourly sums (UsageHourly), not per allocated GPU: a 7-day chart of a
        # 1,000-GPU fleet reads ~25,000 rows instead of ~150,000.
        hourly = UsageHourly.objects.filter(
            hour__gte=buckets[0] if buckets else start_ts, hour__lt=end_ts
        )
        if projects is not None:
            hourly = hourly.filter(project__in=projects)
        if filters.cluster:
            hourly = hourly.filter(cluster__slug=filters.cluster)
        if filters.gpu_model:
            hourly = hourly.filter(gpu_model=filters.gpu_model)
        for item in (
            hourly.annotate(b_=F("hour") / bucket_s)
            .values("b_")
            .annotate(b=Sum("busy_s"), a=Sum("allocated_s"))
        ):
            key = int(item["b_"]) * bucket_s
            busy[key] += item["b"] or 0.0
            allocated[key] += item["a"] or 0.0
        if whole_fleet:
            # Capacity of an hour: every GPU that existed then (first seen by its end).
            # GPUs seen by the end of the first bucket count in every bucket: counted in the
            # database, only the later ones are loaded.
            gpus = _gpus_filtered(Gpu.objects.all(), filters)
            edge = _epoch(buckets[0] + bucket_s) if buckets else filters.start
            base = gpus.filter(Q(first_seen_at__isnull=True) | Q(first_seen_at__lte=edge)).count()
            firsts = sorted(
                int(first.timestamp())
                for first in gpus.filter(first_seen_at__gt=edge).values_list(
                    "first_seen_at", flat=True
                )
            )
            import bisect

            for key in buckets:
                elapsed = min(bucket_s, max(end_ts - key, 1))
                count = base + bisect.bisect_right(firsts, key + bucket_s)
                capacity[key] = count * float(elapsed)
    x, b_out, i_out, u_out = [], [], [], []
    for key in buckets:
        x.append(_epoch(key))
        # The newest bucket is still filling: average over its elapsed part, not all of it.
        span = float(min(bucket_s, max(end_ts - key, 1)))
        b = busy.get(key, 0.0) / span
        a = allocated.get(key, 0.0) / span
        b = min(b, a) if a else b
        b_out.append(round(b, 3))
        i_out.append(round(max(a - b, 0.0), 3))
        if whole_fleet:
            u_out.append(round(max(capacity.get(key, 0.0) / span - a, 0.0), 3))
    return CapacitySeries(bucket_s, x, b_out, i_out, u_out if whole_fleet else None)


@dataclass(frozen=True)
class TrendSeries:
    bucket_s: int
    x: list[dt.datetime]
    efficiency: list[float | None]
    allocated_gpus: list[float]


def efficiency_trend(*, filters: DashboardFilters, projects: QuerySet[Project]) -> TrendSeries:
    """Pooled efficiency and average allocated GPUs of some projects per bucket."""
    bucket_s = filters.bucket_s(minimum=3600)
    buckets = _bucket_range(filters.start_ts, filters.end_ts, bucket_s)
    first = buckets[0] if buckets else filters.start_ts
    # The project's allocations that overlap the range first, then their hourly rows through
    # the (allocation, gpu, hour) index: a few thousand rows instead of every GPU's hours.
    allocation_ids = list(
        Allocation.objects.filter(project__in=projects, start__lt=filters.end)
        .filter(Q(end__isnull=True) | Q(end__gt=_epoch(first)))
        .values_list("id", flat=True)
    )
    hourly = AllocationGpuHourly.objects.filter(
        allocation_id__in=allocation_ids, hour__gte=first, hour__lt=filters.end_ts
    )
    if filters.cluster:
        hourly = hourly.filter(gpu__node__cluster__slug=filters.cluster)
    if filters.gpu_model:
        hourly = hourly.filter(gpu__model_name=filters.gpu_model)
    sums = {
        int(item["b_"]) * bucket_s: item
        for item in hourly.annotate(b_=F("hour") / bucket_s)
        .values("b_")
        .annotate(o=Sum("observed_s"), b=Sum("busy_s"), a=Sum("allocated_s"))
    }
    x, eff, gpus = [], [], []
    for key in buckets:
        item = sums.get(key)
        x.append(_epoch(key))
        if item and item["o"]:
            eff.append(round(100 * item["b"] / item["o"], 2))
        else:
            eff.append(None)
        gpus.append(round((item["a"] or 0.0) / bucket_s, 3) if item else 0.0)
    return TrendSeries(bucket_s, x, eff, gpus)


@dataclass(frozen=True)
class Heatmap:
    bucket_s: int
    x: list[dt.datetime]
    labels: list[str]
    z: list[list[float | None]]
    truncated: int


HEATMAP_MAX_GPUS = 64


def project_heatmap(*, project: Project, filters: DashboardFilters) -> Heatmap:
    """Activity (%) of each GPU the project held, per bucket, only while the project held it."""
    bucket_s = filters.bucket_s(minimum=300)
    start_ts, end_ts = filters.start_ts, filters.end_ts
    buckets = _bucket_range(start_ts, end_ts, bucket_s)
    spans = (
        AllocationGpu.objects.filter(allocation__project=project, allocation__start__lt=filters.end)
        .filter(Q(allocation__end__isnull=True) | Q(allocation__end__gt=filters.start))
        .select_related("gpu__node")
        .values_list(
            "gpu_id", "gpu__node__hostname", "gpu__index", "allocation__start", "allocation__end"
        )
    )
    if filters.cluster:
        spans = spans.filter(gpu__node__cluster__slug=filters.cluster)
    if filters.gpu_model:
        spans = spans.filter(gpu__model_name=filters.gpu_model)
    per_gpu: dict[int, list[tuple[int, int]]] = defaultdict(list)
    labels: dict[int, str] = {}
    for gpu_id, hostname, index, a_start, a_end in spans:
        lo = max(start_ts, int(a_start.timestamp()))
        hi = min(end_ts, int(a_end.timestamp()) if a_end else end_ts)
        per_gpu[gpu_id].append((lo - lo % 300, hi))
        labels[gpu_id] = f"{hostname}/{index}"
    gpu_ids = sorted(per_gpu, key=lambda g: labels[g])
    truncated = max(0, len(gpu_ids) - HEATMAP_MAX_GPUS)
    gpu_ids = gpu_ids[:HEATMAP_MAX_GPUS]
    index_of = {key: i for i, key in enumerate(buckets)}
    z: dict[int, list[float | None]] = {g: [None] * len(buckets) for g in gpu_ids}
    # Each GPU's spans merged (a 5-minute row counts once), joined as a VALUES list: one
    # index range scan per span, and none of the ORM's cost of building and compiling a
    # hundred OR-ed filters (it was half of the project page).
    spans = [(g, lo, hi) for g in gpu_ids for lo, hi in spans_union(per_gpu[g]) if lo < hi]
    if spans and buckets:
        values = ", ".join(["(%s, %s, %s)"] * len(spans))
        with connection.cursor() as cursor:
            cursor.execute(
                f"""SELECT r.gpu_id, r.bucket / %s, SUM(r.busy_s), SUM(r.covered_s)
                    FROM {GpuRollup5m._meta.db_table} r
                    JOIN (VALUES {values}) AS s
                      ON r.gpu_id = s.column1 AND r.bucket >= s.column2
                     AND r.bucket < s.column3
                    GROUP BY r.gpu_id, r.bucket / %s""",  # noqa: S608 - placeholders only
                [bucket_s, *(v for span in spans for v in span), bucket_s],
            )
            for gpu_id, b_, busy, covered in cursor.fetchall():
                i = index_of.get(int(b_) * bucket_s)
                if i is not None and covered:
                    z[gpu_id][i] = round(100 * min(1.0, busy / covered), 1)
    return Heatmap(
        bucket_s,
        [_epoch(k) for k in buckets],
        [labels[g] for g in gpu_ids],
        [z[g] for g in gpu_ids],
        truncated,
    )


@dataclass(frozen=True)
class GpuLines:
    """Per-GPU lines of activity (%), memory (GiB) and power (W) over a span."""

    bucket_s: int
    x: list[dt.datetime]
    series: list[dict]  # {"label", "activity", "memory", "power"}


def gpu_lines(
    *, gpus: Sequence[Gpu], start: dt.datetime, end: dt.datetime, max_points: int = 400
) -> GpuLines:
    from apps.dashboard.filters import BUCKETS_S

    start_ts, end_ts = int(start.timestamp()), int(end.timestamp())
    span = max(1, end_ts - start_ts)
    bucket_s = next((b for b in BUCKETS_S if span / b <= max_points), BUCKETS_S[-1])
    buckets = _bucket_range(start_ts, end_ts, bucket_s)
    index_of = {key: i for i, key in enumerate(buckets)}
    series = []
    by_gpu: dict[int, dict[str, list]] = {}
    for gpu in gpus:
        by_gpu[gpu.id] = {
            "label": f"{gpu.node.hostname}/{gpu.index}",
            "activity": [None] * len(buckets),
            "memory": [None] * len(buckets),
            "power": [None] * len(buckets),
        }
        series.append(by_gpu[gpu.id])
    if gpus and buckets:
        rows = (
            GpuRollup5m.objects.filter(
                gpu_id__in=[g.id for g in gpus], bucket__gte=buckets[0], bucket__lt=end_ts
            )
            .annotate(b_=F("bucket") / bucket_s)
            .values("gpu_id", "b_")
            .annotate(
                busy=Sum("busy_s"),
                covered=Sum("covered_s"),
                mem=Avg("mem_used_mean_mib"),
                power=Avg("power_mean_w"),
            )
        )
        for item in rows:
            i = index_of.get(int(item["b_"]) * bucket_s)
            if i is None:
                continue
            line = by_gpu[item["gpu_id"]]
            if item["covered"]:
                line["activity"][i] = round(100 * min(1.0, item["busy"] / item["covered"]), 1)
            if item["mem"] is not None:
                line["memory"][i] = round(item["mem"] / 1024, 2)
            if item["power"] is not None:
                line["power"][i] = round(item["power"], 1)
    return GpuLines(bucket_s, [_epoch(k) for k in buckets], series)


# --- Pages' tables ---------------------------------------------------------------------------


TEAM_SORTS = {
    "efficiency": lambda r: (r["efficiency"] is None, r["efficiency"] or 0.0),
    "gpu_hours": lambda r: -r["allocated_gpu_hours"],
    "cost": lambda r: -r["cost"],
    "idle_cost": lambda r: -r["idle_cost"],
    "name": lambda r: r["team"].name.lower(),
}


def team_leaderboard(*, teams: QuerySet[Team], rows: Sequence, sort: str) -> list[dict]:
    """One row per visible team with its pooled figures (``rows`` from ``efficiency_by``
    with group="team" over the page's range)."""
    by_key = rows_by_key(rows)
    table = []
    for team in teams:
        row = row_for(by_key, team.slug, team.pk)
        table.append(
            {
                "team": team,
                "efficiency": row.efficiency if row else None,
                "allocated_gpu_hours": row.allocated_gpu_hours if row else 0.0,
                "busy_gpu_hours": row.busy_gpu_hours if row else 0.0,
                "idle_gpu_hours": row.idle_gpu_hours if row else 0.0,
                "cost": Decimal(row.cost) if row else ZERO,
                "idle_cost": Decimal(row.idle_cost) if row else ZERO,
            }
        )
    table.sort(key=TEAM_SORTS.get(sort, TEAM_SORTS["efficiency"]))
    return table


def project_table(*, projects: QuerySet[Project], filters: DashboardFilters) -> list[dict]:
    by_key = rows_by_key(efficiency_rows(group="project", filters=filters, projects=projects))
    table = []
    for project in projects.select_related("team"):
        row = row_for(by_key, project.slug, project.pk)
        table.append({"project": project, "row": row})
    table.sort(key=lambda r: -(r["row"].allocated_gpu_hours if r["row"] else 0.0))
    return table


def allocation_table(
    *, project: Project, filters: DashboardFilters, limit: int = 200
) -> list[dict]:
    """The project's jobs that overlap the range, newest first, with their figures."""
    projects = Project.objects.filter(pk=project.pk)
    by_key = rows_by_key(efficiency_rows(group="allocation", filters=filters, projects=projects))
    allocations = (
        Allocation.objects.filter(project=project, start__lt=filters.end)
        .filter(Q(end__isnull=True) | Q(end__gt=filters.start))
        .annotate(gpu_count=Count("allocation_gpus"))
        .order_by("-start")[:limit]
    )
    return [{"allocation": a, "row": row_for(by_key, a.pk, a.external_id)} for a in allocations]


def allocation_figures(*, allocation: Allocation, filters: DashboardFilters):
    """The job's figures over its whole life (not the page's range)."""
    end = allocation.end or timezone.now()
    projects = Project.objects.filter(pk=allocation.project_id)
    rows = efficiency_by(
        group="allocation",
        start=allocation.start - dt.timedelta(seconds=allocation.start.timestamp() % 3600),
        end=end + dt.timedelta(hours=1),
        projects=projects,
        cluster=None,
        gpu_model=None,
    )
    return row_for(rows_by_key(rows), allocation.pk, allocation.external_id)


# --- Findings (built by the waste part; pages must not break before it exists) ----------------


def findings_open(*, projects: QuerySet[Project] | None, limit: int = 5) -> list:
    """The worst open findings of these projects, worst (costliest) first."""
    try:
        from apps.waste.models import Finding
    except ImportError:
        return []
    try:
        rows = Finding.objects.filter(status="open")
        if projects is not None:
            rows = rows.filter(project__in=projects)
        order = [
            f"-{name}"
            for name in ("wasted_cost", "wasted_gpu_hours")
            if any(field.name == name for field in Finding._meta.get_fields())
        ]
        return list(rows.select_related("project", "allocation").order_by(*order, "-pk")[:limit])
    except Exception:
        # A half-built waste app must not take the overview down with it.
        logger.exception("could not read findings")
        return []


# --- Fleet -------------------------------------------------------------------------------------


def fleet_state(
    *, gpus: QuerySet[Gpu], filters: DashboardFilters, now: dt.datetime | None = None
) -> list[dict]:
    """Clusters → nodes → GPUs with what each GPU is doing now and who holds it."""
    now = now or timezone.now()
    gpus = list(_gpus_filtered(gpus, filters).select_related("node__cluster"))
    latest = _latest_rollups(gpu_ids=[g.id for g in gpus], now=now)
    holders: dict[int, Allocation] = {}
    for link in (
        AllocationGpu.objects.filter(gpu_id__in=[g.id for g in gpus], allocation__start__lte=now)
        .filter(Q(allocation__end__isnull=True) | Q(allocation__end__gt=now))
        .select_related("allocation__project__team")
    ):
        holders[link.gpu_id] = link.allocation
    clusters: dict[int, dict] = {}
    for gpu in gpus:
        node = gpu.node
        cluster = clusters.setdefault(
            node.cluster_id, {"cluster": node.cluster, "nodes": {}, "gpus": 0, "busy": 0}
        )
        node_entry = cluster["nodes"].setdefault(
            node.id, {"node": node, "gpus": [], "last_seen": ago(now=now, then=node.last_seen_at)}
        )
        roll = latest.get(gpu.id)
        activity = activity_of(roll)
        cluster["gpus"] += 1
        cluster["busy"] += 1 if (activity or 0) >= BUSY_THRESHOLD else 0
        node_entry["gpus"].append(
            {
                "gpu": gpu,
                "activity": activity,
                "memory_gib": (roll["mem_used_mean_mib"] / 1024)
                if roll and roll["mem_used_mean_mib"] is not None
                else None,
                "memory_total_gib": gpu.mem_total_mib / 1024 if gpu.mem_total_mib else None,
                "power_w": roll["power_mean_w"] if roll else None,
                "holder": holders.get(gpu.id),
                "stale": gpu.last_seen_at is None
                or (now - gpu.last_seen_at).total_seconds() > RECENT_S,
                "last_seen": ago(now=now, then=gpu.last_seen_at),
                "activity_pct": None if activity is None else round(100 * activity),
            }
        )
    result = []
    for entry in sorted(clusters.values(), key=lambda c: c["cluster"].slug):
        entry["nodes"] = sorted(entry["nodes"].values(), key=lambda n: n["node"].hostname)
        result.append(entry)
    return result


def ago(*, now: dt.datetime, then: dt.datetime | None) -> str:
    """'42 s ago', '3 min ago', '2 h ago', '4 d ago' (cheaper than Django's timesince, which
    matters on a 1,000-GPU fleet table re-rendered every few seconds)."""
    if then is None:
        return "never"
    seconds = max(0, int((now - then).total_seconds()))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def nodes_count() -> int:
    return Node.objects.count()


def gpu_allocations(*, gpu: Gpu, projects: QuerySet[Project] | None, limit: int = 50) -> list:
    rows = Allocation.objects.filter(allocation_gpus__gpu=gpu).select_related("project__team")
    if projects is not None:
        rows = rows.filter(project__in=projects)
    return list(rows.order_by("-start")[:limit])


def gpu_last_bucket(*, gpu: Gpu) -> int | None:
    return GpuRollup5m.objects.filter(gpu=gpu).aggregate(m=Max("bucket"))["m"]
