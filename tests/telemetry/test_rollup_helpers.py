"""Builders for the rollup tests: a small fleet, raw samples written directly, allocations.

Times are offsets in seconds from ``T0``, a UTC midnight, so hand-computed numbers stay
readable; ``NOW`` is a day later (inside raw retention).
"""

from __future__ import annotations

import datetime as dt

from apps.fleet.models import Cluster, Gpu, Node
from apps.telemetry.models import (
    AllocationGpuHourly,
    CapacityDaily,
    GpuRollup5m,
    RawSample,
    UsageDaily,
)
from apps.telemetry.pending import bucket_of, rollup_pending_mark, rollup_pending_mark_range
from apps.tenancy.models import Allocation, AllocationGpu, Project, Team

T0 = 20414 * 86400  # 2025-11-22 00:00 UTC
NOW = dt.datetime.fromtimestamp(T0 + 86400, tz=dt.UTC)
H100 = "NVIDIA H100 80GB HBM3"


def at(offset: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(T0 + offset, tz=dt.UTC)


def fleet(*, gpus: int = 1, interval: int = 10, hostname: str = "node-1") -> list[Gpu]:
    cluster, _ = Cluster.objects.get_or_create(slug="c1", defaults={"name": "C1"})
    node = Node.objects.create(cluster=cluster, hostname=hostname, sample_interval_s=interval)
    return [
        Gpu.objects.create(
            uuid=f"GPU-{hostname}-{i}",
            node=node,
            index=i,
            model_name=H100,
            first_seen_at=at(0),
        )
        for i in range(gpus)
    ]


def mig_instance(*, parent: Gpu, index: int, profile: str = "3g.40gb") -> Gpu:
    return Gpu.objects.create(
        uuid=f"MIG-{parent.uuid}-{index}",
        node=parent.node,
        index=parent.index,
        model_name=H100,
        mig_parent=parent,
        mig_profile=profile,
        first_seen_at=at(0),
    )


def project(slug: str = "p1", team: str = "t1") -> Project:
    team_row, _ = Team.objects.get_or_create(slug=team, defaults={"name": team.upper()})
    row, _ = Project.objects.get_or_create(slug=slug, defaults={"team": team_row, "name": slug})
    return row


def allocate(
    *, external_id: str, gpus: list[Gpu], start: int, end: int | None, proj: Project | None = None
) -> Allocation:
    allocation = Allocation.objects.create(
        source="test",
        external_id=external_id,
        project=proj or project(),
        start=at(start),
        end=at(end) if end is not None else None,
    )
    AllocationGpu.objects.bulk_create([AllocationGpu(allocation=allocation, gpu=g) for g in gpus])
    rollup_pending_mark_range(
        gpu_ids=[g.pk for g in gpus],
        start_ts=T0 + start,
        end_ts=T0 + (end if end is not None else int(NOW.timestamp()) - T0),
    )
    return allocation


def samples(gpu: Gpu, offsets, **fields) -> None:
    """Write samples of one GPU at ``T0 + offset``; each field is a value or a callable of
    the offset. Marks their buckets, like every writer of samples."""
    from apps.telemetry.storage import raw_partitions_ensure, raw_partitions_forget

    offsets = list(offsets)
    # Test transactions roll partitions back: never trust this process's partition cache.
    raw_partitions_forget()
    raw_partitions_ensure(start_ts=T0 + min(offsets), end_ts=T0 + max(offsets))
    rows = []
    for offset in offsets:
        values = {k: (v(offset) if callable(v) else v) for k, v in fields.items()}
        rows.append(RawSample(gpu=gpu, ts=T0 + offset, **values))
    RawSample.objects.bulk_create(rows, ignore_conflicts=True)
    rollup_pending_mark(pairs={(gpu.pk, bucket_of(T0 + o)) for o in offsets})


def r5(gpu: Gpu, offset: int) -> GpuRollup5m:
    return GpuRollup5m.objects.get(gpu=gpu, bucket=T0 + offset)


def hourly(allocation: Allocation, gpu: Gpu, hour_offset: int = 0) -> AllocationGpuHourly:
    return AllocationGpuHourly.objects.get(allocation=allocation, gpu=gpu, hour=T0 + hour_offset)


def snapshot() -> dict:
    """Every rollup row as plain tuples (floats rounded to 9 places), for equality checks."""

    def rows(model, exclude=("id",)):
        fields = [f.attname for f in model._meta.concrete_fields if f.attname not in exclude]
        out = []
        for values in model.objects.values_list(*fields):
            out.append(tuple(round(v, 9) if isinstance(v, float) else v for v in values))
        return sorted(out, key=repr)

    return {
        "5m": rows(GpuRollup5m),
        "hourly": rows(AllocationGpuHourly),
        "usage": rows(UsageDaily),
        "capacity": rows(CapacityDaily),
    }


def rounded_snapshot() -> dict:
    """``snapshot()`` with floats to 12 significant digits: the same sums over the same rows,
    added up in another order (another chunking, another plan), may differ in the last bits."""
    return {
        name: [
            tuple(float(f"{v:.12g}") if isinstance(v, float) else v for v in row) for row in rows
        ]
        for name, rows in snapshot().items()
    }
