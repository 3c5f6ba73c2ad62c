"""Reads of the waste app: resolved policies, findings a user may see."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields
from decimal import Decimal

from django.db.models import F, FloatField, QuerySet, Sum, Value
from django.db.models.functions import Coalesce, Greatest

from apps.chargeback.selectors import RateLookup
from apps.telemetry.models import AllocationGpuHourly
from apps.tenancy.selectors import projects_visible_to, user_sees_all_teams
from apps.waste.models import POLICY_DEFAULTS, Finding, Policy


@dataclass(frozen=True)
class ResolvedPolicy:
    """Every threshold with a value: what the detectors read."""

    idle_allocation_enabled: bool
    idle_activity_pct: float
    idle_minutes: int
    memory_held_idle_enabled: bool
    memory_held_mib: int
    memory_held_idle_minutes: int
    low_efficiency_enabled: bool
    low_efficiency_pct: float
    low_efficiency_window_days: int
    low_efficiency_min_gpu_hours: float
    partial_use_enabled: bool
    partial_use_minutes: int
    oversized_gpu_enabled: bool
    oversized_activity_pct: float
    oversized_memory_mib: int
    oversized_large_gpu_mib: int
    oversized_min_gpu_hours: float
    silent_gpu_enabled: bool
    silent_intervals: int

    def enabled(self, rule: str) -> bool:
        return bool(getattr(self, f"{rule}_enabled"))


assert {f.name for f in fields(ResolvedPolicy)} == set(POLICY_DEFAULTS)


class PolicyBook:
    """All policies in memory (a handful of rows) for many resolutions in one detection run.

    For each field the most specific policy that sets it wins: project > team > cluster >
    global > the built-in defaults of DESIGN.md.
    """

    def __init__(self) -> None:
        self.by_scope: dict[tuple[str, int | None], Policy] = {}
        for policy in Policy.objects.all():
            target = policy.project_id or policy.team_id or policy.cluster_id
            self.by_scope[(policy.scope, target)] = policy
        self._cache: dict[tuple, ResolvedPolicy] = {}

    def resolve(
        self,
        *,
        project_id: int | None = None,
        team_id: int | None = None,
        cluster_id: int | None = None,
    ) -> ResolvedPolicy:
        key = (project_id, team_id, cluster_id)
        if key not in self._cache:
            chain = [
                self.by_scope.get(("project", project_id)) if project_id else None,
                self.by_scope.get(("team", team_id)) if team_id else None,
                self.by_scope.get(("cluster", cluster_id)) if cluster_id else None,
                self.by_scope.get(("global", None)),
            ]
            values = {}
            for name, default in POLICY_DEFAULTS.items():
                value = next(
                    (
                        getattr(p, name)
                        for p in chain
                        if p is not None and getattr(p, name) is not None
                    ),
                    default,
                )
                values[name] = value
            self._cache[key] = ResolvedPolicy(**values)
        return self._cache[key]


def policy_resolve(
    *, project_id: int | None = None, team_id: int | None = None, cluster_id: int | None = None
) -> ResolvedPolicy:
    """The effective policy for one scope (loads the policies; use PolicyBook for many)."""
    return PolicyBook().resolve(project_id=project_id, team_id=team_id, cluster_id=cluster_id)


def findings_visible_to(*, user) -> QuerySet[Finding]:
    """Findings of projects the user may see; project-less findings (a silent GPU nobody
    holds) only for whole-fleet roles."""
    base = Finding.objects.select_related("project", "project__team", "allocation")
    if user_sees_all_teams(user=user):
        return base
    return base.filter(project__in=projects_visible_to(user=user))


@dataclass(frozen=True)
class HourUsage:
    """One project's allocated GPU time in one hour, pooled over its jobs and GPUs: the
    DESIGN.md definitions (observed = allocated with data, busy = activity x time), and the
    unused part (observed - busy) with its cost at the rate card."""

    observed_s: float
    busy_s: float
    unused_s: float
    unused_cost: Decimal


def project_hourly_usage(
    *, project_id: int, start: int, end: int, rates: RateLookup
) -> dict[int, HourUsage]:
    """Per hour starting in ``[start, end)`` (epoch seconds), the project's pooled usage.

    One grouped query over ``AllocationGpuHourly`` (the rollup ``efficiency_by`` reads): the
    database sums the GPU-seconds per hour and rate key (GPU model, MIG profile, cluster), so
    the cost needs one rate look-up per group, never a row per allocation or GPU. Each hour
    is priced on its own UTC day, as chargeback does.
    """
    grouped = (
        AllocationGpuHourly.objects.filter(
            allocation__project_id=project_id, hour__gte=start, hour__lt=end
        )
        .annotate(model=Coalesce(F("gpu__mig_parent__model_name"), F("gpu__model_name")))
        .values("hour", "model", "gpu__mig_profile", "gpu__node__cluster_id")
        .annotate(
            observed=Sum("observed_s"),
            busy=Sum("busy_s"),
            # Per row, so a rounding excess of busy over observed never offsets other rows.
            unused=Sum(
                Greatest(F("observed_s") - F("busy_s"), Value(0.0)), output_field=FloatField()
            ),
        )
        .order_by("hour", "model", "gpu__mig_profile", "gpu__node__cluster_id")
    )
    sums: dict[int, list] = {}
    for item in grouped:
        hour = item["hour"]
        rate = rates.gpu_rate(
            model_name=item["model"],
            mig_profile=item["gpu__mig_profile"],
            cluster_id=item["gpu__node__cluster_id"],
            day=dt.datetime.fromtimestamp(hour, tz=dt.UTC).date(),
        )
        acc = sums.setdefault(hour, [0.0, 0.0, 0.0, Decimal(0)])
        unused = float(item["unused"] or 0.0)
        acc[0] += float(item["observed"] or 0.0)
        acc[1] += float(item["busy"] or 0.0)
        acc[2] += unused
        acc[3] += rate * Decimal(repr(unused)) / Decimal(3600)
    return {hour: HourUsage(*acc) for hour, acc in sums.items()}
