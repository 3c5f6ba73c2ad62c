"""Waste detection benchmark on PostgreSQL: a day of history in one pass, then live passes.

BENCH_GPUS GPUs (1,000) in nodes of 8, held by 4-GPU allocations for a whole day, with
5-minute and hourly rollups (288 buckets per GPU); a quarter of the jobs idle for a stretch,
a quarter half-idle (partial use), the rest busy. Prints the time of the first detection pass
(bulk: the whole day), of a live pass with one new bucket per GPU, and of a pass with nothing
new. Run: ``python tests/bench/run.py waste`` (works in its own database ``<name>_waste``).
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

GPUS = int(os.environ.get("BENCH_GPUS", "1000"))
BASE_URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/flopwatch_bench")
DB_URL = BASE_URL + "_waste"
T0 = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)
BUCKETS = 288


def recreate_database() -> None:
    import psycopg

    name = DB_URL.rsplit("/", 1)[1]
    with psycopg.connect(DB_URL.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def activity(job: int, gpu_in_job: int, bucket: int) -> float:
    kind = job % 4
    if kind == 0 and 60 <= bucket < 120:
        return 0.0  # idle for 5 hours
    if kind == 1 and gpu_in_job >= 2 and 100 <= bucket < 160:
        return 0.0  # half the GPUs idle while the others work
    return 0.7


def rows_for(gpus, holder, start: int, end: int):
    from apps.telemetry.models import AllocationGpuHourly, GpuRollup5m

    t0 = int(T0.timestamp())
    rollups, hourly = [], []
    for position, gpu in enumerate(gpus):
        job, slot = divmod(position, 4)
        for b in range(start, end):
            a = activity(job, slot, b)
            rollups.append(
                GpuRollup5m(
                    gpu_id=gpu.id,
                    bucket=t0 + b * 300,
                    samples=30,
                    covered_s=300,
                    missing_s=0,
                    allocated_s=300,
                    busy_s=a * 300,
                    idle_s=300 if a < 0.01 else 0,
                    mem_held_idle_s=0,
                    mem_used_mean_mib=500,
                    mem_used_max_mib=500,
                )
            )
        for hour in range(start // 12, end // 12):
            if (hour + 1) * 12 > end:
                continue
            busy = sum(activity(job, slot, b) * 300 for b in range(hour * 12, hour * 12 + 12))
            hourly.append(
                AllocationGpuHourly(
                    allocation_id=holder[gpu.id],
                    gpu_id=gpu.id,
                    hour=t0 + hour * 3600,
                    allocated_s=3600,
                    observed_s=3600,
                    busy_s=busy,
                    idle_s=3600 - busy,
                    mem_held_idle_s=0,
                )
            )
    GpuRollup5m.objects.bulk_create(rollups, batch_size=5000)
    AllocationGpuHourly.objects.bulk_create(hourly, batch_size=5000)
    return len(rollups)


def seed():
    from apps.chargeback.services import rate_set
    from apps.fleet.models import Cluster, Gpu, Node
    from apps.tenancy.models import Allocation, AllocationGpu, Project, Team

    cluster = Cluster.objects.create(slug="bench", name="Bench")
    gpus = []
    for n in range(GPUS // 8):
        node = Node.objects.create(cluster=cluster, hostname=f"bench-{n:04d}")
        gpus += Gpu.objects.bulk_create(
            Gpu(uuid=f"GPU-{n}-{i}", node=node, index=i, model_name="NVIDIA H100 80GB HBM3",
                mem_total_mib=81559)
            for i in range(8)
        )  # fmt: skip
    rate_set(
        model="NVIDIA H100 80GB HBM3", price=Decimal("2.50"), effective_from=dt.date(2026, 1, 1)
    )
    team = Team.objects.create(slug="t", name="Team")
    project = Project.objects.create(team=team, slug="p", name="Project")
    holder = {}
    for job in range(len(gpus) // 4):
        allocation = Allocation.objects.create(
            source="slurm", external_id=f"slurm:{job}", project=project, start=T0
        )
        AllocationGpu.objects.bulk_create(
            AllocationGpu(allocation=allocation, gpu=g) for g in gpus[job * 4 : job * 4 + 4]
        )
        for g in gpus[job * 4 : job * 4 + 4]:
            holder[g.id] = allocation.id
    return gpus, holder


def main() -> int:
    recreate_database()
    os.environ["DATABASE_URL"] = DB_URL
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "apps.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from apps.fleet.models import Gpu
    from apps.waste.models import Finding
    from apps.waste.services import waste_detect

    started = time.perf_counter()
    gpus, holder = seed()
    rows = rows_for(gpus, holder, 0, BUCKETS)
    print(f"seeded {rows:,} 5-minute rows ({GPUS} GPUs x {BUCKETS}) in "
          f"{time.perf_counter() - started:.1f} s")  # fmt: skip
    now = T0 + dt.timedelta(minutes=5 * BUCKETS)
    Gpu.objects.update(last_seen_at=now)
    started = time.perf_counter()
    summary = waste_detect(now=now)
    bulk = time.perf_counter() - started
    print(f"first pass (a day of history): {bulk:.2f} s for {summary.buckets:,} allocation-buckets "
          f"({summary.buckets * 4 / bulk:,.0f} GPU-buckets/s); findings {Finding.objects.count()}, "
          f"{summary.late} late")  # fmt: skip
    rows_for(gpus, holder, BUCKETS, BUCKETS + 1)
    now += dt.timedelta(minutes=5)
    Gpu.objects.update(last_seen_at=now)
    started = time.perf_counter()
    waste_detect(now=now)
    print(f"live pass (one new bucket per GPU): {(time.perf_counter() - started) * 1000:.0f} ms")
    started = time.perf_counter()
    waste_detect(now=now)
    print(f"pass with nothing new: {(time.perf_counter() - started) * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
