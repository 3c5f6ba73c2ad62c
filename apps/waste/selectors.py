"""Reads of the waste app: resolved policies, findings a user may see."""

from __future__ import annotations

from dataclasses import dataclass, fields

from django.db.models import QuerySet

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
