"""Chargeback benchmark: a month of hourly rollups for a fleet, on PostgreSQL.

Prints the time to compute a month's statement (with two mid-month rate changes, so three
rate segments), to close the month (compute + freeze) and to write its CSV, for
BENCH_GPUS GPUs (1,000) each allocated every hour of October 2026 (744 hourly rows per GPU).
Run: ``python tests/bench/run.py chargeback`` or directly with
``DATABASE_URL=postgres://postgres@127.0.0.1:5432/flopwatch_bench`` (it works in its own
database, ``<name>_chargeback``, created afresh each run).
"""

from __future__ import annotations

import datetime as dt
import io
import os
import sys
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

GPUS = int(os.environ.get("BENCH_GPUS", "1000"))
PROJECTS = 40
TEAMS = 8
BASE_URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/flopwatch_bench")
DB_URL = BASE_URL + "_chargeback"


def recreate_database() -> None:
    import psycopg

    name = DB_URL.rsplit("/", 1)[1]
    with psycopg.connect(DB_URL.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def seed() -> int:
    from django.db import connection

    from apps.chargeback.services import rate_set
    from apps.fleet.models import Cluster, Gpu, Node
    from apps.tenancy.models import Allocation, AllocationGpu, Project, Team

    cluster = Cluster.objects.create(slug="bench", name="Bench")
    models = ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", "NVIDIA L40S"]
    gpus = []
    for n in range(GPUS // 8):
        node = Node.objects.create(cluster=cluster, hostname=f"bench-{n:04d}")
        gpus += Gpu.objects.bulk_create(
            Gpu(uuid=f"GPU-{n}-{i}", node=node, index=i, model_name=models[n % 3]) for i in range(8)
        )
    teams = [Team.objects.create(slug=f"t{t}", name=f"Team {t}") for t in range(TEAMS)]
    projects = [
        Project.objects.create(team=teams[p % TEAMS], slug=f"p{p}", name=f"Project {p}")
        for p in range(PROJECTS)
    ]
    start = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
    allocations = []
    for index, gpu in enumerate(gpus):
        allocation = Allocation.objects.create(
            source="bench",
            external_id=f"job-{index}",
            project=projects[index % PROJECTS],
            start=start,
        )
        AllocationGpu.objects.create(allocation=allocation, gpu=gpu)
        allocations.append((allocation.pk, gpu.pk))
    for slug, price in (("h100", "4.25"), ("a100", "2.20"), ("l40s", "1.35")):
        rate_set(model=slug, price=Decimal(price), effective_from=dt.date(2026, 1, 1))
    rate_set(model="h100", price=Decimal("3.90"), effective_from=dt.date(2026, 10, 11))
    rate_set(model="a100", price=Decimal("1.95"), effective_from=dt.date(2026, 10, 21))

    first = int(start.timestamp())
    columns = (
        "allocation_id, gpu_id, hour, allocated_s, observed_s, busy_s, idle_s, mem_held_idle_s"
    )
    rows = 0
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY telemetry_allocationgpuhourly ({columns}) FROM STDIN") as copy,
    ):
        for allocation_id, gpu_id in allocations:
            busy = 600 + (gpu_id * 37) % 2900
            for h in range(31 * 24):
                copy.write_row(
                    (allocation_id, gpu_id, first + 3600 * h, 3600.0, 3590.0, busy, 300.0, 0.0)
                )
                rows += 1
    return rows


def main() -> int:
    recreate_database()
    os.environ["DATABASE_URL"] = DB_URL
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "apps.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from apps.chargeback.export import statement_csv_write
    from apps.chargeback.selectors import BillingMonth, statement_compute, statement_for_month
    from apps.chargeback.services import month_close

    started = time.perf_counter()
    rows = seed()
    print(
        f"seeded {rows:,} hourly rows ({GPUS} GPUs x 744 h) in {time.perf_counter() - started:.1f} s"
    )
    month = BillingMonth(2026, 10)
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        statement = statement_compute(month=month)
        timings.append(time.perf_counter() - started)
    print(
        f"statement_compute: {len(statement.rows)} rows, total {statement.totals().cost} "
        f"{statement.currency}; best {min(timings) * 1000:.0f} ms of 3 "
        f"({rows / min(timings):,.0f} hourly rows/s)"
    )
    started = time.perf_counter()
    month_close(month=month, user=None, now=dt.datetime(2026, 11, 2, tzinfo=dt.UTC))
    print(f"month_close (compute + freeze): {(time.perf_counter() - started) * 1000:.0f} ms")
    started = time.perf_counter()
    buffer = io.StringIO()
    statement_csv_write(statement=statement_for_month(month=month), out=buffer)
    print(
        f"frozen statement read + CSV ({len(buffer.getvalue()):,} bytes): "
        f"{(time.perf_counter() - started) * 1000:.0f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
