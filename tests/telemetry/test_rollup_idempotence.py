"""Run twice, in another order, in small chunks, or with another worker holding the lock:
always the same rows. Plus daily usage and capacity, retention and ``manage.py rollup``."""

from __future__ import annotations

import datetime as dt
from io import StringIO

import pytest
from django.core.management import call_command

from apps.telemetry.models import (
    AllocationGpuHourly,
    CapacityDaily,
    GpuRollup5m,
    RollupPending,
    UsageDaily,
)
from apps.telemetry.rollups import rollups_prune, rollups_run_pending
from tests.telemetry.test_rollup_helpers import (
    NOW,
    T0,
    allocate,
    fleet,
    mig_instance,
    project,
    samples,
    snapshot,
)

pytestmark = pytest.mark.django_db


def _world(order: str) -> None:
    """The same data written in two different orders (and rolled up in between or not)."""
    g1, g2 = fleet(gpus=2, interval=10)
    mig = mig_instance(parent=g2, index=0)

    def act(o):
        return ((o // 10) * 7 % 100) / 100

    parts = [
        lambda: samples(g1, range(0, 1800, 10), util_pct=lambda o: (o // 10) * 13 % 101),
        lambda: samples(g1, range(1800, 4000, 15), util_pct=30.0, sm_active=act),
        lambda: samples(g2, range(0, 2000, 10), util_pct=0.0, mem_used_mib=4096.0),
        lambda: samples(mig, range(100, 900, 10), gr_engine_active=act, util_pct=99.0),
        lambda: allocate(external_id="a", gpus=[g1, g2], start=123, end=3333),
        lambda: allocate(external_id="b", gpus=[g1], start=1000, end=None, proj=project("p2")),
        lambda: allocate(external_id="m", gpus=[mig], start=0, end=950),
    ]
    if order == "forward":
        for part in parts:
            part()
        rollups_run_pending(now=NOW)
    else:
        # Allocations first, rolling up after every step, samples in reverse.
        for part in reversed(parts):
            part()
            rollups_run_pending(now=NOW, chunk=3)


def test_run_twice_and_in_another_order_gives_the_same_rows():
    _world("forward")
    first = snapshot()
    assert first["5m"] and first["hourly"] and first["usage"] and first["capacity"]
    # Everything marked again and re-run: identical.
    RollupPending.objects.bulk_create(
        [
            RollupPending(gpu_id=gpu_id, bucket=bucket)
            for gpu_id, bucket in GpuRollup5m.objects.values_list("gpu_id", "bucket")
        ],
        ignore_conflicts=True,
    )
    rollups_run_pending(now=NOW)
    rollups_run_pending(now=NOW)
    assert snapshot() == first
    # Same data, built in the other order with tiny chunks, in a fresh database state.
    for model in (GpuRollup5m, AllocationGpuHourly, UsageDaily, CapacityDaily):
        model.objects.all().delete()
    from apps.fleet.models import Gpu
    from apps.telemetry.models import RawSample
    from apps.tenancy.models import Allocation

    RawSample.objects.all().delete()
    Allocation.objects.all().delete()
    Gpu.objects.all().delete()
    Gpu.node.field.related_model.objects.all().delete()
    _world("reverse")
    again = snapshot()
    # GPU and allocation ids differ between the two builds; compare everything else.
    assert _without_ids(again) == _without_ids(first)


def _without_ids(snap: dict) -> dict:
    return {
        "5m": sorted(row[1:] for row in snap["5m"]),
        "hourly": sorted(row[2:] for row in snap["hourly"]),
        "usage": sorted((r[0], *r[4:]) for r in snap["usage"]),  # day, model, seconds
        "capacity": snap["capacity"],
    }


def test_daily_usage_and_capacity():
    g1, _g2 = fleet(gpus=2, interval=10)
    samples(g1, range(0, 3600, 10), util_pct=25.0)
    allocate(external_id="a", gpus=[g1], start=0, end=3600)
    # Second allocation on the same GPU overlapping half: usage counts both, capacity once.
    allocate(external_id="b", gpus=[g1], start=1800, end=5400, proj=project("p2"))
    rollups_run_pending(now=NOW)
    day = dt.date(2025, 11, 22)
    usage = {u.project.slug: u for u in UsageDaily.objects.filter(day=day)}
    assert usage["p1"].allocated_s == 3600 and usage["p2"].allocated_s == 3600
    assert usage["p1"].busy_s == pytest.approx(900.0)
    assert usage["p2"].observed_s == 1810  # 1800..3600, and 3590 stands for 20 s
    (capacity,) = CapacityDaily.objects.filter(day=day)
    # Two GPUs for the whole day; g1 held 0..5400 (union of both allocations).
    assert capacity.capacity_s == 2 * 86400
    assert capacity.allocated_s == 5400
    assert capacity.unallocated_s == 2 * 86400 - 5400
    assert capacity.busy_s == pytest.approx(900.0 + 0.25 * 10)  # the last sample's spill


def test_open_allocation_accrues_hours_without_samples():
    (gpu,) = fleet(interval=10)
    allocation = allocate(external_id="open", gpus=[gpu], start=0, end=None)
    now = dt.datetime.fromtimestamp(T0 + 7200 + 900, tz=dt.UTC)
    RollupPending.objects.all().delete()  # nothing marked: only the clock moves
    rollups_run_pending(now=now)
    rows = dict(
        AllocationGpuHourly.objects.filter(allocation=allocation).values_list("hour", "allocated_s")
    )
    assert rows == {T0 + 3600: 3600, T0 + 7200: 900}


def test_retention_prunes_5m_and_hourly_but_keeps_daily(settings):
    settings.FLOPWATCH_ROLLUP_5M_RETENTION_DAYS = 1
    settings.FLOPWATCH_HOURLY_RETENTION_DAYS = 2
    (gpu,) = fleet(interval=10)
    samples(gpu, range(0, 600, 10), util_pct=50.0)
    allocate(external_id="a", gpus=[gpu], start=0, end=600)
    rollups_run_pending(now=NOW)
    later = NOW + dt.timedelta(hours=1)
    assert rollups_prune(now=later) == {"gpu_5m": 3, "hourly": 0}
    assert rollups_prune(now=later + dt.timedelta(days=1)) == {"gpu_5m": 0, "hourly": 1}
    assert rollups_prune(now=later + dt.timedelta(days=1)) == {"gpu_5m": 0, "hourly": 0}
    assert UsageDaily.objects.count() == 1


def test_rollup_command_runs_pending_work_and_prunes():
    (gpu,) = fleet(interval=10)
    samples(gpu, range(0, 600, 10), util_pct=50.0)
    out = StringIO()
    call_command("rollup", "--prune", stdout=out)
    assert "rolled up 2 pending buckets" in out.getvalue()
    assert "pruned" in out.getvalue()
    assert RollupPending.objects.count() == 0


def test_a_second_worker_backs_off_while_the_lock_is_held(postgres_only):
    """Two beats or workers never recompute at once: the second returns ``busy`` and leaves
    the marks for whoever holds the lock."""
    import psycopg

    from apps.telemetry.rollups import _LOCK_KEY
    from tests.conftest import test_database_url

    (gpu,) = fleet(interval=10)
    samples(gpu, range(0, 300, 10), util_pct=50.0)
    with psycopg.connect(test_database_url(), autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", [_LOCK_KEY])
        assert rollups_run_pending(now=NOW)["busy"] is True
        assert RollupPending.objects.filter(gpu=gpu).exists()
        other.execute("SELECT pg_advisory_unlock(%s)", [_LOCK_KEY])
    assert "busy" not in rollups_run_pending(now=NOW)
    assert not RollupPending.objects.exists()
