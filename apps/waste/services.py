"""Writes of the waste app: running detection, changing findings, filling the outbox.

Every function is idempotent: detection continues from its cursors, notifications are keyed
(``Notification.key`` is unique) so enqueueing twice adds nothing, and sending claims each row
with a conditional UPDATE that must change exactly one row.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Min, Q
from django.utils import timezone

from apps.chargeback.selectors import RateLookup
from apps.fleet.models import Gpu
from apps.telemetry.models import RollupPending
from apps.tenancy.models import Allocation, AllocationGpu, Project
from apps.tenancy.roles import FLEET_ADMINS_GROUP
from apps.tenancy.selectors import user_can_act_on_project
from apps.waste.detectors import (
    BUCKET_S,
    HOUR_S,
    AllocationWalk,
    FindingSink,
    GpuInfo,
    ProjectWalk,
    allocation_horizon,
    bucket_of,
    data_end_by_gpu,
    dt_of,
    pending_by_gpu,
    ts_of,
)
from apps.waste.models import (
    Channel,
    DetectionCursor,
    Finding,
    FindingEvent,
    Notification,
    NotificationPreference,
    ProjectDetectionCursor,
    Rule,
    Severity,
    Status,
)
from apps.waste.selectors import PolicyBook, project_hourly_usage

log = logging.getLogger(__name__)
CENT = Decimal("0.01")
ACTIVE = (Status.OPEN, Status.ACKNOWLEDGED, Status.SNOOZED)


class FindingActionError(Exception):
    """An action on a finding that cannot be done (not allowed, bad input)."""


def _cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def severity_of(*, rule: str, wasted_gpu_hours: float, duration_h: float) -> str:
    """Critical from a GPU-day wasted (or a day of silence), warning from 4 GPU-hours."""
    amount = duration_h if rule == Rule.SILENT_GPU else wasted_gpu_hours
    if amount >= 24:
        return Severity.CRITICAL
    if amount >= 4:
        return Severity.WARNING
    return Severity.INFO


def _event(finding: Finding, *, kind: str, old: str, at: dt.datetime, actor=None, note=""):
    FindingEvent.objects.create(
        finding=finding, kind=kind, old_status=old, new_status=finding.status, at=at,
        actor=actor, note=note,
    )  # fmt: skip


# --- Detection --------------------------------------------------------------------------------


@dataclass
class DetectionSummary:
    allocations: int = 0
    buckets: int = 0
    projects: int = 0
    opened: int = 0
    resolved: int = 0
    late: int = 0
    silent_opened: int = 0
    silent_resolved: int = 0
    woke: int = 0
    notifications: int = 0
    new_findings: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        data = dict(self.__dict__)
        data.pop("new_findings")
        return data


DETECTION_FIELDS = (
    "last_seen", "wasted_gpu_hours", "wasted_cost_exact", "wasted_cost", "severity", "detail",
)  # fmt: skip


class _DbSink(FindingSink):
    """Turns the walker's runs into Finding rows (inside the allocation's transaction)."""

    def __init__(self, *, now: dt.datetime, summary: DetectionSummary) -> None:
        self.now = now
        self.summary = summary
        self.created: list[int] = []
        self.cache: dict[int, Finding | None] = {}
        self.dirty: set[int] = set()
        self.new_gpus: dict[int, set[int]] = {}

    @staticmethod
    def _apply(finding: Finding, run: dict) -> None:
        finding.last_seen = dt_of(run["end"])
        finding.wasted_gpu_hours = run["waste_s"] / HOUR_S
        finding.wasted_cost_exact = Decimal(run["cost"]).quantize(Decimal("0.00000001"))
        finding.wasted_cost = _cents(Decimal(run["cost"]))
        finding.severity = severity_of(
            rule=finding.rule,
            wasted_gpu_hours=finding.wasted_gpu_hours,
            duration_h=(finding.last_seen - finding.started).total_seconds() / HOUR_S,
        )
        detail = dict(finding.detail)
        detail.update({"buckets": run["n"], "gpu_hours": run["gpu_s"] / HOUR_S})
        if run.get("efficiency") is not None:
            detail["efficiency"] = run["efficiency"]
        detail.update(run.get("detail") or {})
        finding.detail = detail

    def open(self, *, rule: str, allocation: Allocation, run: dict) -> int:
        return self._create(
            rule=rule, subject=f"alloc:{allocation.id}", allocation=allocation,
            project_id=allocation.project_id, run=run,
        )  # fmt: skip

    def open_project(self, *, rule: str, project: Project, run: dict) -> int:
        # A project-level finding: no allocation and no GPUs (a project's jobs can span
        # hundreds of GPUs); pages link to the project instead.
        return self._create(
            rule=rule, subject=f"project:{project.id}", allocation=None, project_id=project.id,
            run=run,
        )  # fmt: skip

    def _create(
        self, *, rule: str, subject: str, allocation: Allocation | None, project_id: int,
        run: dict,
    ) -> int:  # fmt: skip
        finding = Finding(
            rule=rule,
            subject=subject,
            allocation=allocation,
            project_id=project_id,
            started=dt_of(run["start"]),
            detected_at=self.now,
        )
        self._apply(finding, run)
        finding.save()
        finding.gpus.set(run["gpus"] or [])
        _event(finding, kind="opened", old="", at=finding.last_seen)
        self.created.append(finding.id)
        self.cache[finding.id] = finding
        self.summary.opened += 1
        return finding.id

    def _get(self, finding_id: int) -> Finding | None:
        if finding_id not in self.cache:
            self.cache[finding_id] = Finding.objects.filter(pk=finding_id).first()
        return self.cache[finding_id]

    def extend(self, *, finding_id: int, run: dict) -> None:
        # Kept in memory and written once per allocation by flush(): a finding that grows
        # for a day of imported history is one UPDATE, not 288.
        finding = self._get(finding_id)
        if finding is None or finding.status == Status.RESOLVED:
            return  # resolved by hand: the run goes on, the finding stays closed
        self._apply(finding, run)
        self.dirty.add(finding_id)
        self.new_gpus.setdefault(finding_id, set()).update(run["gpus"])

    def flush(self) -> None:
        """Write what detection owns (totals, last seen, severity); never the status, which
        a user may be changing at this very moment."""
        for finding_id in sorted(self.dirty):
            finding = self.cache[finding_id]
            Finding.objects.filter(pk=finding_id).update(
                **{name: getattr(finding, name) for name in DETECTION_FIELDS}
            )
            finding.gpus.add(*self.new_gpus.get(finding_id, ()))
        self.dirty.clear()
        self.new_gpus.clear()

    def close(self, *, finding_id: int, run: dict, ended: dt.datetime) -> None:
        finding = self._get(finding_id)
        if finding is None:
            return
        if finding.status != Status.RESOLVED:
            self._apply(finding, run)
            self.dirty.add(finding_id)
            self.new_gpus.setdefault(finding_id, set()).update(run["gpus"])
            self.flush()
        Finding.objects.filter(pk=finding_id, ended__isnull=True).update(ended=ended)
        finding.ended = finding.ended or ended
        # Conditional: only an unresolved finding is resolved (and gets a "cleared" row).
        changed = Finding.objects.filter(pk=finding_id).exclude(status=Status.RESOLVED)
        old = finding.status
        if changed.update(status=Status.RESOLVED, resolved_at=self.now) == 1:
            finding.status = Status.RESOLVED
            _event(finding, kind="cleared", old=old, at=ended, note="condition cleared")
            self.summary.resolved += 1


def _allocations_to_walk():
    done = DetectionCursor.objects.filter(done=True).values("allocation_id")
    return Allocation.objects.exclude(id__in=done).select_related("project")


def _walk_allocation(
    *, allocation: Allocation, gpus: list[Gpu], horizon: int, now: dt.datetime,
    book: PolicyBook, rates: RateLookup, summary: DetectionSummary,
) -> None:  # fmt: skip
    with transaction.atomic():
        # Two detectors on one allocation take turns here, so a bucket is evaluated once;
        # the second one finds the cursor moved on and has nothing left to do.
        cursor = DetectionCursor.objects.select_for_update().get(allocation=allocation)
        if cursor.done:
            return
        infos = {gpu.id: GpuInfo.of(gpu) for gpu in gpus}
        policy = book.resolve(
            project_id=allocation.project_id,
            team_id=allocation.project.team_id,
            cluster_id=gpus[0].node.cluster_id,
        )
        sink = _DbSink(now=now, summary=summary)
        walk = AllocationWalk(allocation, infos, policy, rates, sink)
        state = cursor.state or {}
        bucket_horizon = bucket_of(horizon)
        if bucket_horizon > cursor.next_bucket:
            summary.buckets += (bucket_horizon - cursor.next_bucket) // BUCKET_S
            cursor.next_bucket = walk.walk_buckets(
                state=state, start=cursor.next_bucket, horizon=bucket_horizon
            )
        hour_horizon = horizon
        if allocation.end is not None and cursor.next_bucket >= bucket_of(
            ts_of(allocation.end) + BUCKET_S
        ):
            # Every bucket of the ended allocation is in, so is its last, partial hour.
            end_ts = ts_of(allocation.end)
            hour_horizon = max(horizon, end_ts + (-end_ts) % HOUR_S)
        cursor.next_hour = walk.walk_hours(
            state=state, start=cursor.next_hour, horizon=hour_horizon
        )
        if allocation.end is not None:
            end_ts = ts_of(allocation.end)
            if cursor.next_bucket >= bucket_of(end_ts + BUCKET_S) and cursor.next_hour >= end_ts:
                walk.finish(state=state)
                cursor.done = True
        sink.flush()
        cursor.state = state
        cursor.save()
        summary.allocations += 1
        _created_announce(created=sink.created, now=now, summary=summary)


def _created_announce(*, created: list[int], now: dt.datetime, summary: DetectionSummary) -> None:
    """Queue the alerts of the findings a walk opened (inside the walk's transaction)."""
    if not created:
        return
    for finding in Finding.objects.filter(pk__in=created):
        if finding.ended is not None:
            # It had already ended when detection first saw it (history, an outage):
            # the digest reports it, nobody gets an e-mail about the past.
            finding.detected_late = True
            finding.save(update_fields=["detected_late"])
            summary.late += 1
        else:
            summary.notifications += finding_opened_notify(finding=finding, now=now)
    summary.new_findings.extend(created)


def project_horizons(*, now: dt.datetime) -> dict[int, int]:
    """Per project with jobs on GPUs: the end (epoch seconds, a whole hour) of the hours whose
    data is in for every job of the project, for the project-level ``low_efficiency``.

    The allocation cursors already know when an hour of a job is complete (every GPU reported
    past it, no rollup pending: ``allocation_horizon``), so a job that still reports holds its
    project back at its cursor's next hour, and a quiet job (no GPU seen for
    ``FLOPWATCH_WASTE_LATE_WAIT_S``: silent, or history) only at a rollup still pending on
    its GPUs -- the same rule that stops a silent GPU holding back its job's other GPUs.
    Jobs fully evaluated (cursor done) hold nothing. Three grouped queries for the fleet.
    """
    now_ts = ts_of(now)
    top = now_ts - now_ts % HOUR_S
    fresh_since = now - dt.timedelta(seconds=getattr(settings, "FLOPWATCH_WASTE_LATE_WAIT_S", 3600))
    with_gpus = Allocation.objects.filter(allocation_gpus__isnull=False)
    horizons = dict.fromkeys(
        with_gpus.order_by().values_list("project_id", flat=True).distinct(), top
    )
    held = (
        DetectionCursor.objects.filter(
            done=False, allocation__allocation_gpus__gpu__last_seen_at__gte=fresh_since
        )
        .values("allocation__project_id")
        .annotate(at=Min("next_hour"))
        .values_list("allocation__project_id", "at")
    )
    # Pending rollups are few (the rollup task drains them within minutes).
    first_pending = dict(
        RollupPending.objects.values("gpu_id")
        .annotate(at=Min("bucket"))
        .values_list("gpu_id", "at")
    )
    pending = [
        (project_id, first_pending[gpu_id])
        for project_id, gpu_id in AllocationGpu.objects.filter(gpu_id__in=list(first_pending))
        .exclude(
            allocation_id__in=DetectionCursor.objects.filter(done=True).values("allocation_id")
        )
        .values_list("allocation__project_id", "gpu_id")
    ]
    for project_id, at in [*held, *pending]:
        if project_id in horizons:
            horizons[project_id] = min(horizons[project_id], at - at % HOUR_S)
    return horizons


def project_low_efficiency_detect(
    *, now: dt.datetime, book: PolicyBook, rates: RateLookup, summary: DetectionSummary
) -> None:
    """The project-level ``low_efficiency`` (see ``detectors.ProjectWalk``): each project
    walks forward hour by hour from its cursor, once the hour is complete for all its jobs."""
    horizons = project_horizons(now=now)
    if not horizons:
        return
    have = set(
        ProjectDetectionCursor.objects.filter(project_id__in=horizons).values_list(
            "project_id", flat=True
        )
    )
    firsts = (
        Allocation.objects.filter(project_id__in=set(horizons) - have)
        .values("project_id")
        .annotate(first=Min("start"))
        .values_list("project_id", "first")
    )
    ProjectDetectionCursor.objects.bulk_create(
        [
            ProjectDetectionCursor(project_id=pid, next_hour=ts_of(first) - ts_of(first) % HOUR_S)
            for pid, first in firsts
        ],
        ignore_conflicts=True,
    )
    cursors = dict(
        ProjectDetectionCursor.objects.filter(project_id__in=horizons).values_list(
            "project_id", "next_hour"
        )
    )
    due = [pid for pid, last in horizons.items() if pid in cursors and last > cursors[pid]]
    for project in Project.objects.filter(id__in=due).order_by("id"):
        _walk_project(
            project=project, last=horizons[project.id], now=now, book=book, rates=rates,
            summary=summary,
        )  # fmt: skip


def _walk_project(
    *, project: Project, last: int, now: dt.datetime, book: PolicyBook, rates: RateLookup,
    summary: DetectionSummary,
) -> None:  # fmt: skip
    with transaction.atomic():
        # As for allocations: two detectors take turns on a project, the second finds the
        # cursor moved on, so an hour is evaluated (and a finding opened) once.
        cursor = ProjectDetectionCursor.objects.select_for_update().get(project=project)
        if last <= cursor.next_hour:
            return
        # Project and team policies apply; cluster overrides do not (a project's jobs may
        # run in several clusters).
        policy = book.resolve(project_id=project.id, team_id=project.team_id)
        sink = _DbSink(now=now, summary=summary)
        walk = ProjectWalk(project, policy, sink)
        state = cursor.state or {}
        if policy.low_efficiency_enabled or state.get("runs"):
            usage = project_hourly_usage(
                project_id=project.id,
                start=cursor.next_hour + HOUR_S - walk.window_s(),
                end=last,
                rates=rates,
            )
        else:
            usage = {}  # switched off and nothing open: no need to read the rollups
        cursor.next_hour = walk.walk_hours(
            state=state, start=cursor.next_hour, last=last, usage=usage
        )
        sink.flush()
        cursor.state = state
        cursor.save()
        summary.projects += 1
        _created_announce(created=sink.created, now=now, summary=summary)


def silent_gpus_detect(*, now: dt.datetime, book: PolicyBook, summary: DetectionSummary) -> None:
    """``silent_gpu``: a GPU of an active node that reported before and has now been quiet
    for more than ``silent_intervals`` expected intervals (live state, not rollups)."""
    gpus = Gpu.objects.filter(node__is_active=True, last_seen_at__isnull=False).select_related(
        "node"
    )
    open_findings = {
        f.subject: f for f in Finding.objects.filter(rule=Rule.SILENT_GPU, status__in=ACTIVE)
    }
    for gpu in gpus:
        policy = book.resolve(cluster_id=gpu.node.cluster_id)
        last = gpu.last_seen_at
        quiet_s = (now - last).total_seconds()
        silent = policy.silent_gpu_enabled and quiet_s > (
            policy.silent_intervals * gpu.node.sample_interval_s
        )
        subject = f"gpu:{gpu.id}"
        finding = open_findings.get(subject)
        if silent and finding is None:
            holder = (
                Allocation.objects.filter(allocation_gpus__gpu=gpu, start__lte=last)
                .filter(Q(end__isnull=True) | Q(end__gt=last))
                .order_by("-start")
                .first()
            )
            try:
                with transaction.atomic():
                    finding = Finding.objects.create(
                        rule=Rule.SILENT_GPU,
                        subject=subject,
                        allocation=holder,
                        project_id=holder.project_id if holder else None,
                        started=last,
                        last_seen=now,
                        detected_at=now,
                        severity=severity_of(
                            rule=Rule.SILENT_GPU, wasted_gpu_hours=0, duration_h=quiet_s / HOUR_S
                        ),
                        detail={"node": gpu.node.hostname, "quiet_s": quiet_s},
                    )
                    finding.gpus.set([gpu])
                    _event(finding, kind="opened", old="", at=now)
                    summary.notifications += finding_opened_notify(finding=finding, now=now)
            except IntegrityError:
                continue  # another detector opened it a moment ago
            summary.silent_opened += 1
        elif finding is not None and silent:
            Finding.objects.filter(pk=finding.pk).update(
                last_seen=now,
                severity=severity_of(
                    rule=Rule.SILENT_GPU, wasted_gpu_hours=0, duration_h=quiet_s / HOUR_S
                ),
            )
        elif finding is not None:
            summary.silent_resolved += _silent_clear(
                finding=finding, ended=gpu.last_seen_at, now=now, note="reporting again"
            )
    # A node switched to inactive is no longer expected to report: its silence is over.
    seen = {f"gpu:{gpu_id}" for gpu_id in gpus.values_list("id", flat=True)}
    for subject, finding in open_findings.items():
        if subject not in seen:
            summary.silent_resolved += _silent_clear(
                finding=finding, ended=now, now=now, note="node no longer expected to report"
            )


def _silent_clear(*, finding: Finding, ended: dt.datetime, now: dt.datetime, note: str) -> int:
    """Resolve a silent_gpu finding once, even with two detectors (conditional UPDATE)."""
    old = finding.status
    changed = (
        Finding.objects.filter(pk=finding.pk)
        .exclude(status=Status.RESOLVED)
        .update(status=Status.RESOLVED, ended=ended, resolved_at=now)
    )
    if changed != 1:
        return 0
    finding.status = Status.RESOLVED
    _event(finding, kind="cleared", old=old, at=now, note=note)
    return 1


def snoozes_wake(*, now: dt.datetime) -> int:
    """Snoozed findings whose time is up are open again (and due for reminders)."""
    woke = 0
    for finding in Finding.objects.filter(status=Status.SNOOZED, snoozed_until__lte=now):
        with transaction.atomic():
            changed = Finding.objects.filter(pk=finding.pk, status=Status.SNOOZED).update(
                status=Status.OPEN
            )
            if changed == 1:
                finding.status = Status.OPEN
                _event(finding, kind="woke", old=Status.SNOOZED, at=now, note="snooze over")
                woke += 1
    return woke


def waste_detect(*, now: dt.datetime | None = None, progress=None) -> DetectionSummary:
    """Run every rule up to ``now``: the allocation and project rules from the rollups, silent GPUs from
    the last-seen times; then queue reminders and the digest. Safe to run concurrently."""
    now = now or timezone.now()
    summary = DetectionSummary()
    book = PolicyBook()
    rates = RateLookup.load()
    allocations = list(_allocations_to_walk())
    ids = [a.id for a in allocations]
    # Everything the horizons need, in a few queries for the whole fleet.
    have_cursor = set(
        DetectionCursor.objects.filter(allocation_id__in=ids).values_list(
            "allocation_id", flat=True
        )
    )
    DetectionCursor.objects.bulk_create(
        [
            DetectionCursor(
                allocation=a,
                next_bucket=bucket_of(ts_of(a.start)),
                next_hour=ts_of(a.start) - ts_of(a.start) % HOUR_S,
            )
            for a in allocations
            if a.id not in have_cursor
        ],
        ignore_conflicts=True,
    )
    cursors = {
        c[0]: (c[1], c[2])
        for c in DetectionCursor.objects.filter(allocation_id__in=ids).values_list(
            "allocation_id", "next_bucket", "next_hour"
        )
    }
    gpus_of: dict[int, list[Gpu]] = defaultdict(list)
    for link in AllocationGpu.objects.filter(allocation_id__in=ids).select_related(
        "gpu__node", "gpu__mig_parent"
    ):
        gpus_of[link.allocation_id].append(link.gpu)
    all_gpu_ids = sorted({g.id for gpus in gpus_of.values() for g in gpus})
    pending = pending_by_gpu(gpu_ids=all_gpu_ids)
    oldest = min((c[0] for c in cursors.values()), default=0)
    data_end = data_end_by_gpu(gpu_ids=all_gpu_ids, since=oldest - BUCKET_S)
    for allocation in progress(allocations) if progress else allocations:
        gpus = gpus_of.get(allocation.id)
        if not gpus:
            continue
        horizon = allocation_horizon(
            allocation=allocation, gpus=gpus, now=now, pending=pending, data_end=data_end
        )
        next_bucket, next_hour = cursors[allocation.id]
        if (
            allocation.end is None
            and bucket_of(horizon) <= next_bucket
            and horizon - horizon % HOUR_S <= next_hour
        ):
            continue  # no new data since the last run
        _walk_allocation(
            allocation=allocation, gpus=gpus, horizon=horizon, now=now, book=book, rates=rates,
            summary=summary,
        )  # fmt: skip
    # After the allocations: their cursors tell which hours are complete for each project.
    project_low_efficiency_detect(now=now, book=book, rates=rates, summary=summary)
    silent_gpus_detect(now=now, book=book, summary=summary)
    summary.woke = snoozes_wake(now=now)
    summary.notifications += reminders_enqueue(now=now)
    summary.notifications += digest_enqueue(now=now)
    return summary


# --- Findings lifecycle -----------------------------------------------------------------------


def finding_acknowledge(*, finding: Finding, user, comment: str = "", now=None) -> Finding:
    now = now or timezone.now()
    _check_can_act(finding=finding, user=user)
    if finding.status == Status.RESOLVED:
        raise FindingActionError("this finding is already resolved")
    old = finding.status
    finding.status = Status.ACKNOWLEDGED
    finding.acknowledged_by = user
    finding.acknowledged_at = now
    finding.comment = comment.strip()
    finding.snoozed_until = None
    finding.save()
    _event(finding, kind="acknowledged", old=old, at=now, actor=user, note=finding.comment)
    return finding


def finding_snooze(*, finding: Finding, user, until: dt.datetime, now=None) -> Finding:
    now = now or timezone.now()
    _check_can_act(finding=finding, user=user)
    if finding.status == Status.RESOLVED:
        raise FindingActionError("this finding is already resolved")
    if until <= now:
        raise FindingActionError("snooze until: must be in the future")
    old = finding.status
    finding.status = Status.SNOOZED
    finding.snoozed_until = until
    finding.save()
    _event(
        finding,
        kind="snoozed",
        old=old,
        at=now,
        actor=user,
        note=f"until {until:%Y-%m-%d %H:%M} UTC",
    )
    return finding


def finding_resolve(*, finding: Finding, user, comment: str = "", now=None) -> Finding:
    now = now or timezone.now()
    _check_can_act(finding=finding, user=user)
    if finding.status == Status.RESOLVED:
        return finding
    old = finding.status
    finding.status = Status.RESOLVED
    finding.resolved_at = now
    if comment.strip():
        finding.comment = comment.strip()
    finding.save()
    _event(finding, kind="resolved", old=old, at=now, actor=user, note=comment.strip())
    return finding


def _check_can_act(*, finding: Finding, user) -> None:
    if finding.project is None:
        from apps.tenancy.selectors import user_is_fleet_admin

        allowed = user_is_fleet_admin(user=user)
    else:
        allowed = user_can_act_on_project(user=user, project=finding.project)
    if not allowed:
        raise FindingActionError("you may not act on this project's findings")


# --- Notifications: who gets what -------------------------------------------------------------


def _opted_out_ids() -> set[int]:
    return set(
        NotificationPreference.objects.filter(email_opt_out=True).values_list("user_id", flat=True)
    )


def _owner_recipients(project: Project | None):
    if project is None:
        return []
    out = _opted_out_ids()
    return [u for u in project.owners.filter(is_active=True) if u.email and u.pk not in out]


def fleet_admins_for_digest():
    User = get_user_model()
    out = _opted_out_ids()
    admins = (
        User.objects.filter(is_active=True)
        .filter(Q(is_superuser=True) | Q(groups__name=FLEET_ADMINS_GROUP))
        .distinct()
    )
    return [u for u in admins if u.email and u.pk not in out]


def _enqueue(rows: list[Notification]) -> int:
    before = Notification.objects.filter(key__in=[r.key for r in rows]).count()
    Notification.objects.bulk_create(rows, ignore_conflicts=True)
    return Notification.objects.filter(key__in=[r.key for r in rows]).count() - before


def finding_opened_notify(*, finding: Finding, now: dt.datetime) -> int:
    """E-mail the project's owners and post to the team's webhooks, once per finding."""
    rows = [
        Notification(
            key=f"opened:{finding.id}:email:{user.pk}",
            channel="email",
            kind="opened",
            recipient=user.email,
            user=user,
            finding=finding,
            next_attempt_at=now,
            created_at=now,
        )
        for user in _owner_recipients(finding.project)
    ]
    if finding.project is not None:
        for channel in Channel.objects.filter(team_id=finding.project.team_id, enabled=True):
            rows.append(
                Notification(
                    key=f"opened:{finding.id}:webhook:{channel.pk}",
                    channel="webhook",
                    kind="opened",
                    recipient=channel.url,
                    webhook=channel,
                    finding=finding,
                    next_attempt_at=now,
                    created_at=now,
                )
            )
    return _enqueue(rows) if rows else 0


def reminders_enqueue(*, now: dt.datetime) -> int:
    """Every 24 h a finding stays open and unacknowledged, its owners get a reminder."""
    period = dt.timedelta(seconds=getattr(settings, "FLOPWATCH_REMINDER_PERIOD_S", 86_400))
    rows = []
    for finding in Finding.objects.filter(
        status=Status.OPEN, detected_late=False, detected_at__lte=now - period
    ).select_related("project"):
        number = int((now - finding.detected_at) / period)
        for user in _owner_recipients(finding.project):
            rows.append(
                Notification(
                    key=f"reminder:{finding.id}:{number}:email:{user.pk}",
                    channel="email",
                    kind="reminder",
                    recipient=user.email,
                    user=user,
                    finding=finding,
                    next_attempt_at=now,
                    created_at=now,
                )
            )
    return _enqueue(rows) if rows else 0


def digest_period_start(*, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The digest period that has just ended: (start, end)."""
    now = now.astimezone(dt.UTC)
    if settings.FLOPWATCH_DIGEST_PERIOD == "hourly":
        end = now.replace(minute=0, second=0, microsecond=0)
        return end - dt.timedelta(hours=1), end
    end = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return end - dt.timedelta(days=1), end


def digest_enqueue(*, now: dt.datetime) -> int:
    """One digest per fleet admin per period, if anything is open or was found late."""
    start, end = digest_period_start(now=now)
    anything = (
        Finding.objects.filter(status__in=ACTIVE, detected_at__lt=end).exists()
        or Finding.objects.filter(
            detected_late=True, detected_at__gte=start, detected_at__lt=end
        ).exists()
    )
    if not anything:
        return 0
    rows = [
        Notification(
            key=f"digest:{end:%Y-%m-%dT%H}:email:{user.pk}",
            channel="email",
            kind="digest",
            recipient=user.email,
            user=user,
            digest_since=start,
            next_attempt_at=now,
            created_at=now,
        )
        for user in fleet_admins_for_digest()
    ]
    return _enqueue(rows) if rows else 0


# --- Notifications: sending -------------------------------------------------------------------


@dataclass
class SendSummary:
    sent: int = 0
    retried: int = 0
    failed: int = 0
    skipped: int = 0


def notification_claim(*, notification_id: int, now: dt.datetime) -> bool:
    """Take one notification for sending. The UPDATE only matches a pending row that is due,
    so of two workers racing for it exactly one sees one changed row."""
    from django.db.models import F

    changed = Notification.objects.filter(
        pk=notification_id, state=Notification.State.PENDING, next_attempt_at__lte=now
    ).update(state=Notification.State.SENDING, claimed_at=now, attempts=F("attempts") + 1)
    return changed == 1


def notifications_send_due(*, now: dt.datetime | None = None, limit: int = 200) -> SendSummary:
    """Send every due notification this worker manages to claim."""
    from apps.waste.transports import transport_for

    now = now or timezone.now()
    summary = SendSummary()
    # A worker that died between claiming and recording the outcome may or may not have sent
    # its message; never sending twice wins over sending at least once, so such a row fails
    # visibly (in the admin) instead of going out again.
    summary.failed += Notification.objects.filter(
        state=Notification.State.SENDING, claimed_at__lt=now - dt.timedelta(hours=1)
    ).update(state=Notification.State.FAILED, last_error="worker died while sending; not retried")
    due = list(
        Notification.objects.filter(state=Notification.State.PENDING, next_attempt_at__lte=now)
        .order_by("next_attempt_at", "id")
        .values_list("id", flat=True)[:limit]
    )
    for notification_id in due:
        if not notification_claim(notification_id=notification_id, now=now):
            summary.skipped += 1
            continue
        notification = Notification.objects.select_related(
            "finding", "finding__project", "finding__allocation", "webhook", "user"
        ).get(pk=notification_id)
        outcome = transport_for(notification.channel).deliver(notification=notification, now=now)
        setattr(summary, outcome, getattr(summary, outcome) + 1)
    return summary
