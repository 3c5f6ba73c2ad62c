"""A small fleet with jobs and rollup rows written directly, for page tests and browser tests.

Two clusters, three nodes, five GPUs; project a1 runs a 2-GPU job (busy on one GPU, idle with
memory held on the other), a2 a finished 1-GPU job, b1 a busy job in the other cluster. The
rows cover the last ``hours`` hours at 5-minute, hourly and daily grain, consistent with each
other the way the rollups would write them (per-GPU and per-project hourly rows included).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from decimal import Decimal

from django.utils import timezone

H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-40GB"


@dataclass
class DashData:
    now: dt.datetime
    clusters: list
    gpus: list
    job_a1: object
    job_a2: object
    job_b1: object


def dash_data_build(
    personas, *, hours: int = 48, now: dt.datetime | None = None, varied: bool = False
) -> DashData:
    """Build the fleet; ``varied`` makes activity follow a daily wave (for screenshots)
    instead of the constant levels the page tests assert on."""
    from apps.chargeback.models import GpuModel, GpuModelAlias, Rate
    from apps.chargeback.selectors import gpu_model_name_normalise
    from apps.fleet.models import Cluster, Gpu, Node
    from apps.telemetry.models import (
        AllocationGpuHourly,
        CapacityDaily,
        GpuRollup5m,
        UsageDaily,
        UsageHourly,
    )
    from apps.tenancy.models import Allocation, AllocationGpu

    now = now or timezone.now()
    end_ts = int(now.timestamp())
    end_ts -= end_ts % 300
    start_ts = end_ts - hours * 3600
    start_ts -= start_ts % 3600

    for name, price in ((H100, "2.50"), (A100, "1.20")):
        # The chargeback migrations may already seed common models and their aliases.
        alias = GpuModelAlias.objects.filter(name=gpu_model_name_normalise(name)).first()
        if alias is not None:
            model = alias.gpu_model
        else:
            model, _ = GpuModel.objects.get_or_create(
                slug=name.split()[1].split("-")[0].lower(), defaults={"name": name}
            )
            GpuModelAlias.objects.create(gpu_model=model, name=gpu_model_name_normalise(name))
        Rate.objects.create(
            gpu_model=model, effective_from=dt.date(2020, 1, 1), price_per_gpu_hour=Decimal(price)
        )

    east = Cluster.objects.create(slug="east", name="East")
    west = Cluster.objects.create(slug="west", name="West")
    seen = dt.datetime.fromtimestamp(end_ts, tz=dt.UTC)
    first = dt.datetime.fromtimestamp(start_ts, tz=dt.UTC)
    n1 = Node.objects.create(cluster=east, hostname="gpu-east-01", last_seen_at=seen)
    n2 = Node.objects.create(cluster=east, hostname="gpu-east-02", last_seen_at=seen)
    n3 = Node.objects.create(cluster=west, hostname="gpu-west-01", last_seen_at=seen)

    def gpu(node, index, model):
        return Gpu.objects.create(
            uuid=f"GPU-{node.hostname}-{index}",
            node=node,
            index=index,
            model_name=model,
            mem_total_mib=81559 if model == H100 else 40960,
            first_seen_at=first,
            last_seen_at=seen,
        )

    g0, g1 = gpu(n1, 0, H100), gpu(n1, 1, H100)
    g2 = gpu(n2, 0, H100)
    g3 = gpu(n3, 0, A100)
    g4 = gpu(n3, 1, A100)  # never allocated: unallocated capacity
    gpus = [g0, g1, g2, g3, g4]

    def alloc(ext, project, gpu_list, a_start, a_end):
        a = Allocation.objects.create(
            source="slurm",
            external_id=ext,
            project=project,
            user_name="alice",
            start=dt.datetime.fromtimestamp(a_start, tz=dt.UTC),
            end=dt.datetime.fromtimestamp(a_end, tz=dt.UTC) if a_end else None,
        )
        for g in gpu_list:
            AllocationGpu.objects.create(allocation=a, gpu=g)
        return a

    half = start_ts + (hours // 2) * 3600
    job_a1 = alloc("slurm:1001", personas.project_a1, [g0, g1], start_ts, None)
    job_a2 = alloc("slurm:1002", personas.project_a2, [g2], start_ts, half)
    job_b1 = alloc("slurm:2001", personas.project_b1, [g3], start_ts, None)

    # activity per GPU while held; memory MiB
    profile = {
        g0.id: (job_a1, 0.80, 30000.0),
        g1.id: (job_a1, 0.0, 20000.0),  # idle, a model loaded
        g2.id: (job_a2, 0.40, 10000.0),
        g3.id: (job_b1, 0.90, 35000.0),
    }
    rollups, hourly = [], []
    for g in gpus:
        job, act, mem = profile.get(g.id, (None, 0.0, 0.0))
        job_end = int(job.end.timestamp()) if job and job.end else end_ts
        hour_busy: dict[int, float] = {}
        for bucket in range(start_ts, end_ts, 300):
            held = job is not None and bucket < job_end
            a = act if held else 0.0
            if varied and held and a > 0:
                phase = 2 * math.pi * ((bucket % 86400) / 86400 + g.id * 0.17)
                a = max(0.0, min(1.0, a * (0.6 + 0.45 * math.sin(phase))))
            if held:
                hour = bucket - bucket % 3600
                hour_busy[hour] = hour_busy.get(hour, 0.0) + 300.0 * a
            m = mem if held else 0.0
            idle = 300.0 if a < 0.01 else 0.0
            rollups.append(
                GpuRollup5m(
                    gpu=g,
                    bucket=bucket,
                    samples=30,
                    covered_s=300.0,
                    missing_s=0.0,
                    allocated_s=300.0 if held else 0.0,
                    busy_s=300.0 * a,
                    idle_s=idle,
                    mem_held_idle_s=idle if m > 1024 else 0.0,
                    util_mean=100 * a,
                    util_max=100 * a,
                    sm_active_mean=a,
                    mem_used_mean_mib=m,
                    mem_used_max_mib=m,
                    power_mean_w=80 + 500 * a,
                    energy_j=300 * (80 + 500 * a),
                    activity_source="util",
                )
            )
        if job is None:
            continue
        for hour in range(start_ts, job_end, 3600):
            secs = min(3600, job_end - hour)
            a = profile[g.id][1]
            idle = float(secs) if a < 0.01 else 0.0
            hourly.append(
                AllocationGpuHourly(
                    allocation=job,
                    gpu=g,
                    hour=hour,
                    allocated_s=float(secs),
                    observed_s=float(secs),
                    busy_s=hour_busy.get(hour, 0.0) if varied else secs * a,
                    idle_s=idle,
                    mem_held_idle_s=idle,
                )
            )
    GpuRollup5m.objects.bulk_create(rollups, batch_size=2000)
    AllocationGpuHourly.objects.bulk_create(hourly, batch_size=2000)

    # Hourly and daily usage rows from the hourly ones (as the rollups do).
    usage_hourly: dict = {}
    for h in hourly:
        g = next(x for x in gpus if x.id == h.gpu_id)
        key = (h.hour, h.allocation.project_id, g.node.cluster_id, g.model_name)
        acc = usage_hourly.setdefault(key, [0.0] * 5)
        for i, v in enumerate((h.allocated_s, h.observed_s, h.busy_s, h.idle_s, h.mem_held_idle_s)):
            acc[i] += v
    UsageHourly.objects.bulk_create(
        UsageHourly(
            hour=hour,
            project_id=project_id,
            cluster_id=cluster_id,
            gpu_model=model,
            allocated_s=acc[0],
            observed_s=acc[1],
            busy_s=acc[2],
            idle_s=acc[3],
            mem_held_idle_s=acc[4],
        )
        for (hour, project_id, cluster_id, model), acc in usage_hourly.items()
    )
    usage: dict = {}
    for h in hourly:
        day = dt.datetime.fromtimestamp(h.hour, tz=dt.UTC).date()
        g = next(x for x in gpus if x.id == h.gpu_id)
        project = h.allocation.project
        key = (day, project.id, g.node.cluster_id, g.model_name)
        acc = usage.setdefault(key, [project.team_id, 0.0, 0.0, 0.0, 0.0, 0.0])
        for i, v in enumerate((h.allocated_s, h.observed_s, h.busy_s, h.idle_s, h.mem_held_idle_s)):
            acc[i + 1] += v
    UsageDaily.objects.bulk_create(
        UsageDaily(
            day=day,
            team_id=acc[0],
            project_id=project_id,
            cluster_id=cluster_id,
            gpu_model=model,
            allocated_s=acc[1],
            observed_s=acc[2],
            busy_s=acc[3],
            idle_s=acc[4],
            mem_held_idle_s=acc[5],
        )
        for (day, project_id, cluster_id, model), acc in usage.items()
    )
    capacity: dict = {}
    for r in rollups:
        g = next(x for x in gpus if x.id == r.gpu_id)
        day = dt.datetime.fromtimestamp(r.bucket, tz=dt.UTC).date()
        acc = capacity.setdefault((day, g.node.cluster_id, g.model_name), [0.0, 0.0, 0.0])
        acc[0] += 300.0
        acc[1] += r.allocated_s
        acc[2] += r.busy_s
    CapacityDaily.objects.bulk_create(
        CapacityDaily(
            day=day,
            cluster_id=cluster_id,
            gpu_model=model,
            capacity_s=acc[0],
            allocated_s=acc[1],
            unallocated_s=acc[0] - acc[1],
            busy_s=acc[2],
        )
        for (day, cluster_id, model), acc in capacity.items()
    )
    return DashData(
        now=dt.datetime.fromtimestamp(end_ts, tz=dt.UTC) + dt.timedelta(minutes=1),
        clusters=[east, west],
        gpus=gpus,
        job_a1=job_a1,
        job_a2=job_a2,
        job_b1=job_b1,
    )
