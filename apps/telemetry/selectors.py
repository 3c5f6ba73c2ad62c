"""Reads of the rollups: pooled efficiency and cost by team, project, allocation or GPU.

``efficiency_by`` answers from ``AllocationGpuHourly`` (one row per allocation x GPU x hour),
so any range costs the same whatever its length. Hours are whole: an hour belongs to the
range when it *starts* inside ``[start, end)`` (the same rule as chargeback statements), so a
range from 10:30 to 12:30 counts the hours 11:00 and 12:00 in full and nothing of 10:00.
Cost is allocated GPU-hours x the GPU's rate on the UTC day of each hour (MIG instances at
their fraction of the parent's price); sums stay ``Decimal`` and are rounded to cents once.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db.models import F, QuerySet, Sum
from django.db.models.functions import Coalesce

from apps.telemetry.models import AllocationGpuHourly
from apps.tenancy.models import Project

GROUPS = ("team", "project", "allocation", "gpu")
CENT = Decimal("0.01")
_KEY_FIELDS = {
    "team": "allocation__project__team__slug",
    "project": "allocation__project__slug",
    "allocation": "allocation_id",
    "gpu": "gpu__uuid",
}


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


def efficiency_by(
    *,
    group: str,
    start: dt.datetime,
    end: dt.datetime,
    projects: QuerySet[Project] | None = None,
    cluster: str | None = None,
    gpu_model: str | None = None,
) -> list[EfficiencyRow]:
    """Pooled efficiency (busy / observed allocated GPU-seconds) and cost per group over the
    hours starting in ``[start, end)``; ``projects`` limits to what a user may see (None =
    everything), ``cluster`` is a cluster slug, ``gpu_model`` a model name (a MIG instance
    counts as its parent's model). Rows sorted by key."""
    from apps.chargeback.selectors import RateLookup

    if group not in GROUPS:
        raise ValueError(f"group: expected one of {', '.join(GROUPS)}, got {group!r}")
    if start >= end:
        raise ValueError("start must be before end")
    lo = int(start.timestamp())
    hi = int(end.timestamp())
    rows = AllocationGpuHourly.objects.filter(hour__gte=lo, hour__lt=hi)
    if projects is not None:
        rows = rows.filter(allocation__project__in=projects)
    if cluster:
        rows = rows.filter(gpu__node__cluster__slug=cluster)
    rows = rows.annotate(model=Coalesce(F("gpu__mig_parent__model_name"), F("gpu__model_name")))
    if gpu_model:
        rows = rows.filter(model=gpu_model)
    key_field = _KEY_FIELDS[group]
    grouped = (
        rows.annotate(day=F("hour") / 86400)
        .values(key_field, "day", "model", "gpu__mig_profile", "gpu__node__cluster_id")
        .annotate(
            allocated=Sum("allocated_s"),
            observed=Sum("observed_s"),
            busy=Sum("busy_s"),
            idle=Sum("idle_s"),
            held=Sum("mem_held_idle_s"),
        )
        .order_by()
    )
    rates = RateLookup.load()
    seconds: dict[Any, list[float]] = defaultdict(lambda: [0.0] * 5)
    money: dict[Any, list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
    for item in grouped:
        key = item[key_field]
        day = dt.date(1970, 1, 1) + dt.timedelta(days=int(item["day"]))
        rate = rates.gpu_rate(
            model_name=item["model"],
            mig_profile=item["gpu__mig_profile"],
            cluster_id=item["gpu__node__cluster_id"],
            day=day,
        )
        acc = seconds[key]
        for i, name in enumerate(("allocated", "observed", "busy", "idle", "held")):
            acc[i] += item[name] or 0.0
        money[key][0] += _dec(item["allocated"]) * rate / 3600
        money[key][1] += _dec(item["idle"]) * rate / 3600
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
