"""Writes to tenancy: API tokens, and allocations opened, closed and re-opened."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from apps.core.tokens import token_generate, token_hash
from apps.fleet.models import Gpu
from apps.tenancy.models import Allocation, AllocationGpu, ApiToken

API_TOKEN_PREFIX = "fwu"


def api_token_create(*, user: AbstractBaseUser, name: str) -> tuple[ApiToken, str]:
    """A personal API token; the plain token is returned once and stored hashed."""
    token = token_generate(prefix=API_TOKEN_PREFIX)
    api_token = ApiToken.objects.create(
        user=user, name=name, token_hash=token_hash(token=token), token_prefix=token[:10]
    )
    return api_token, token


# --- Allocations ------------------------------------------------------------------------------
# Opened and closed by schedulers through POST /api/v1/allocations, discovered from samples by
# the ingest (apps.telemetry.services), and closed after a grace period when their job stops
# appearing. Every change marks the rollup buckets of the span it changes.


class AllocationInputError(Exception):
    """The allocation request is invalid; ``errors`` lists ``(path, message)``."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{p}: {m}" for p, m in errors))


@dataclass(frozen=True)
class AllocationUpsertResult:
    allocation: Allocation
    created: bool
    changed: bool


def _ts(value: datetime | None, *, now: datetime) -> int:
    return int((value or now).timestamp())


def allocation_upsert(
    *,
    external_id: str,
    project: str,
    start: datetime,
    end: datetime | None = None,
    user: str = "",
    gpus: list[str] | None = None,
    now: datetime | None = None,
) -> AllocationUpsertResult:
    """Open, update, close or re-open an allocation; the same call twice changes nothing.

    ``external_id`` such as ``slurm:123456`` (the prefix becomes the source); ``end=None``
    keeps it open (or re-opens a closed one); GPUs are added, never removed. An unknown
    project is created in the unassigned team, as for samples.
    """
    from apps.telemetry.pending import rollup_pending_mark_range
    from apps.telemetry.services import job_source, project_for_label

    now = now or timezone.now()
    errors: list[tuple[str, str]] = []
    external_id = (external_id or "").strip()
    if not external_id or len(external_id) > 255:
        errors.append(("external_id", "required: at most 255 characters"))
    if start.tzinfo is None:
        errors.append(("start", "needs a time zone offset"))
    if end is not None and end.tzinfo is None:
        errors.append(("end", "needs a time zone offset"))
    if not errors and end is not None and end < start:
        errors.append(("end", "is before start"))
    uuids = list(dict.fromkeys(gpus or []))
    gpu_rows = {g.uuid: g for g in Gpu.objects.filter(uuid__in=uuids)}
    errors += [(f"gpus[{i}]", f"unknown GPU {u}") for i, u in enumerate(uuids) if u not in gpu_rows]
    if errors:
        raise AllocationInputError(errors)

    with transaction.atomic():
        source = job_source(external_id)
        allocation = (
            Allocation.objects.select_for_update()
            .filter(source=source, external_id=external_id)
            .first()
        )
        created = allocation is None
        changed = False
        if created:
            allocation, created = Allocation.objects.get_or_create(
                source=source,
                external_id=external_id,
                defaults={
                    "project": project_for_label(label=project),
                    "user_name": (user or "")[:150],
                    "start": start,
                    "end": end,
                },
            )
        old_gpu_ids = set(allocation.allocation_gpus.values_list("gpu_id", flat=True))
        if not created:
            spans: list[tuple[int, int]] = []
            if allocation.start != start:
                spans.append(
                    (
                        _ts(min(start, allocation.start), now=now),
                        _ts(max(start, allocation.start), now=now),
                    )
                )
            if allocation.end != end:
                a, b = _ts(allocation.end, now=now), _ts(end, now=now)
                spans.append((min(a, b), max(a, b)))
            if spans:
                Allocation.objects.filter(pk=allocation.pk).update(start=start, end=end)
                allocation.start, allocation.end = start, end
                changed = True
                for low, high in spans:
                    rollup_pending_mark_range(gpu_ids=old_gpu_ids, start_ts=low, end_ts=high)
                # An explicit close or re-open is the scheduler's word: the grace period
                # no longer applies to this close.
                from apps.telemetry.models import AllocationSeen

                AllocationSeen.objects.filter(pk=allocation.pk).update(closed_by_grace=False)
        new_ids = sorted({g.pk for g in gpu_rows.values()} - old_gpu_ids)
        if new_ids:
            AllocationGpu.objects.bulk_create(
                [AllocationGpu(allocation=allocation, gpu_id=g) for g in new_ids],
                ignore_conflicts=True,
            )
            changed = True
        if new_ids or created:
            rollup_pending_mark_range(
                gpu_ids=new_ids if not created else [g.pk for g in gpu_rows.values()],
                start_ts=_ts(allocation.start, now=now),
                end_ts=_ts(allocation.end, now=now),
            )
    return AllocationUpsertResult(
        allocation=allocation, created=created, changed=changed or created
    )


def allocations_close_stale(*, now: datetime | None = None) -> int:
    """Close allocations whose job has not appeared in samples for the grace period.

    Only allocations seen in samples are considered (an allocation opened by a scheduler
    whose GPUs never report stays for the scheduler to close). The end is the last sample
    plus one interval. Returns how many were closed; running it twice closes nothing more.
    """
    from apps.telemetry.models import AllocationGpuHourly, AllocationSeen
    from apps.telemetry.pending import rollup_pending_mark_range

    now = now or timezone.now()
    cutoff = int(now.timestamp()) - settings.FLOPWATCH_ALLOCATION_GRACE_S
    closed = 0
    stale = AllocationSeen.objects.filter(
        allocation__end__isnull=True, last_ts__lt=cutoff
    ).values_list("allocation_id", "last_ts")
    for allocation_id, last_ts in stale:
        with transaction.atomic():
            allocation = (
                Allocation.objects.select_for_update()
                .filter(pk=allocation_id, end__isnull=True)
                .first()
            )
            if allocation is None:
                continue
            # The last sample stands for one interval of its node (the slowest of them).
            intervals = Gpu.objects.filter(allocation_gpus__allocation=allocation).values_list(
                "node__sample_interval_s", flat=True
            )
            end_ts = last_ts + max(intervals, default=settings.FLOPWATCH_DEFAULT_INTERVAL_S)
            end = max(datetime.fromtimestamp(end_ts, tz=UTC), allocation.start)
            Allocation.objects.filter(pk=allocation.pk).update(end=end)
            AllocationSeen.objects.filter(pk=allocation.pk).update(closed_by_grace=True)
            # While open, the rollups counted it as held up to their last run; those rows
            # past its end need recomputing, and nothing later (a history import's job that
            # ended weeks ago and was never rolled up while open marks a few buckets, not weeks).
            accounted = AllocationGpuHourly.objects.filter(
                allocation_id=allocation.pk, hour__gte=end_ts - end_ts % 3600
            ).aggregate(last=Max("hour"))["last"]
            rollup_pending_mark_range(
                gpu_ids=list(allocation.allocation_gpus.values_list("gpu_id", flat=True)),
                start_ts=end_ts,
                end_ts=end_ts if accounted is None else min(int(now.timestamp()), accounted + 3600),
            )
            closed += 1
    return closed
