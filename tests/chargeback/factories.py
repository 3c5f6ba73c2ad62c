"""Small builders for chargeback tests: fleet, allocations and hourly rollup rows written
directly (the rollup engine has its own tests)."""

from __future__ import annotations

import datetime as dt
import itertools

from apps.fleet.models import Cluster, Gpu, Node
from apps.telemetry.models import AllocationGpuHourly, CapacityDaily
from apps.tenancy.models import Allocation, AllocationGpu, Project

_counter = itertools.count(1)


def ts(text: str) -> int:
    """Epoch seconds of an ISO-8601 UTC moment ("2026-10-03T05:00")."""
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp())


def cluster_make(slug: str = "alpha") -> Cluster:
    return Cluster.objects.get_or_create(slug=slug, defaults={"name": slug.title()})[0]


def gpu_make(
    *,
    model: str = "NVIDIA H100 80GB HBM3",
    cluster: Cluster | None = None,
    mig_parent: Gpu | None = None,
    mig_profile: str = "",
) -> Gpu:
    cluster = cluster or cluster_make()
    node, _ = Node.objects.get_or_create(
        hostname=f"{cluster.slug}-node", defaults={"cluster": cluster}
    )
    n = next(_counter)
    return Gpu.objects.create(
        uuid=f"GPU-test-{n}",
        node=node,
        index=n % 8,
        model_name=model,
        mig_parent=mig_parent,
        mig_profile=mig_profile,
    )


def allocation_make(*, project: Project, gpus: list[Gpu], start: int) -> Allocation:
    allocation = Allocation.objects.create(
        source="test",
        external_id=f"job-{next(_counter)}",
        project=project,
        start=dt.datetime.fromtimestamp(start, tz=dt.UTC),
    )
    for gpu in gpus:
        AllocationGpu.objects.create(allocation=allocation, gpu=gpu)
    return allocation


def hourly_make(
    *,
    allocation: Allocation,
    gpu: Gpu,
    hour: int,
    allocated_s: float = 3600,
    busy_s: float = 1800,
    idle_s: float = 0,
    observed_s: float | None = None,
) -> AllocationGpuHourly:
    return AllocationGpuHourly.objects.create(
        allocation=allocation,
        gpu=gpu,
        hour=hour,
        allocated_s=allocated_s,
        observed_s=allocated_s if observed_s is None else observed_s,
        busy_s=busy_s,
        idle_s=idle_s,
        mem_held_idle_s=0,
    )


def hours_make(
    *, allocation: Allocation, gpu: Gpu, first: int, count: int, **fields
) -> list[AllocationGpuHourly]:
    return [
        hourly_make(allocation=allocation, gpu=gpu, hour=first + 3600 * i, **fields)
        for i in range(count)
    ]


def capacity_make(
    *, day: dt.date, unallocated_s: float, gpu_model: str = "NVIDIA H100 80GB HBM3", cluster=None
) -> CapacityDaily:
    cluster = cluster or cluster_make()
    return CapacityDaily.objects.create(
        day=day,
        cluster=cluster,
        gpu_model=gpu_model,
        capacity_s=unallocated_s,
        allocated_s=0,
        unallocated_s=unallocated_s,
    )
