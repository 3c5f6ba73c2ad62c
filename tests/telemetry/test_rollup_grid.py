"""The grid path (5-minute rows from one GROUP BY plus a bitmap of grid points, no sort) and
the exact statement (LEAD over sorted samples) give the same rows: compared on random data
with every irregularity either path has to get right, on SQLite and PostgreSQL."""

from __future__ import annotations

import random

import pytest

from apps.telemetry.models import GpuRollup5m, RollupPending
from apps.telemetry.pending import bucket_of
from apps.telemetry.rollups import rollups_run_pending
from tests.conftest import require
from tests.telemetry.test_rollup_helpers import (
    NOW,
    T0,
    allocate,
    fleet,
    mig_instance,
    project,
    r5,
    samples,
    snapshot,
)

pytestmark = pytest.mark.django_db


def _rerun(settings, mode: str, *, mixed: bool = True) -> dict:
    """Every bucket of every sample marked again, rolled up on ``mode``; the rows.
    ``mixed``: the random fleet's, some buckets on each path."""
    from apps.telemetry.models import RawSample
    from apps.telemetry.pending import rollup_pending_mark

    settings.FLOPWATCH_ROLLUP_GRID_PATH = mode
    pairs = {(g, bucket_of(ts)) for g, ts in RawSample.objects.values_list("gpu_id", "ts")}
    rollup_pending_mark(pairs=pairs)
    summary = rollups_run_pending(now=NOW)
    assert RollupPending.objects.count() == 0
    # Most buckets are on the grid; the jittered GPU, the 7 s one and gr_engine_active are not.
    if mode == "always":
        assert 0 < summary["grid_rows"] < summary["gpu_rows"]
        if mixed:
            assert 0.5 * summary["gpu_rows"] < summary["grid_rows"]
    else:
        assert summary["grid_rows"] == 0
    # Sums in another order differ in the last bits: 12 significant digits are compared.
    return {
        name: [
            tuple(float(f"{v:.12g}") if isinstance(v, float) else v for v in row) for row in rows
        ]
        for name, rows in snapshot().items()
    }


def _random_fleet(seed: int) -> None:
    rng = random.Random(seed)
    g10 = fleet(gpus=3, interval=10, hostname="n10")
    g15 = fleet(gpus=1, interval=15, hostname="n15")
    g7 = fleet(gpus=1, interval=7, hostname="n7")  # 300 % 7 != 0: exact statement only
    g5 = fleet(gpus=1, interval=5, hostname="n5")  # 60 grid points (PostgreSQL only)
    mig = mig_instance(parent=g10[2], index=0)

    def value(kind: str):
        def pick(offset: int):
            roll = rng.random()
            # sm_active drops out in stretches (below), the other fields here and there.
            if kind != "sm" and roll < 0.05:
                return None
            if kind == "util":
                return rng.choice([0.0, 0.5, 37.0, 100.0, rng.uniform(0, 100)])
            if kind == "sm":
                return rng.choice([0.0, 0.004, 0.5, rng.random()])
            if kind == "mem":
                return rng.choice([0.0, 1024.0, 1025.0, 40960.0])
            return rng.uniform(50, 700)

        return pick

    def grid_offsets(step: int, start: int, end: int, *, jitter: bool) -> list[int]:
        out = []
        for offset in range(start, end, step):
            if rng.random() < 0.08:
                continue  # a missing sample: its predecessor stands for the cap
            if rng.random() < 0.02:
                # An outage several intervals long.
                continue
            if jitter and rng.random() < 0.1:
                offset += rng.choice([1, 3])  # off the grid: these buckets go exact
            out.append(offset)
        return sorted(set(out))

    for gpu in g10:
        offsets = grid_offsets(10, 0, 7200, jitter=gpu == g10[1])
        fields = {"util_pct": value("util"), "mem_used_mib": value("mem"), "power_w": value("p")}
        if gpu != g10[0]:
            fields["sm_active"] = value("sm")
        if gpu == g10[2]:
            # DCGM reports gr_engine_active for whole GPUs too; only MIG activity uses it.
            fields["gr_engine_active"] = value("sm")
            # DCGM's profiling counters taken away for a while (a profiler attached): NVML
            # activity only, and buckets with sm_active in some samples, which are not
            # clean and go through the exact statement.
            sm = fields["sm_active"]
            fields["sm_active"] = lambda o, sm=sm: None if 2000 <= o < 2290 else sm(o)
        samples(gpu, offsets, **fields)
    samples(
        g15[0],
        grid_offsets(15, 0, 5400, jitter=False),
        util_pct=value("util"),
        mem_used_mib=value("mem"),
    )
    samples(g7[0], grid_offsets(7, 0, 3600, jitter=False), util_pct=value("util"))
    samples(g5[0], grid_offsets(5, 0, 3600, jitter=True), util_pct=value("util"))
    # A MIG instance: gr_engine_active in its second half only.
    samples(mig, range(0, 1800, 10), util_pct=value("util"), sm_active=value("sm"))
    samples(mig, range(1800, 3600, 10), util_pct=value("util"), gr_engine_active=value("sm"))
    # A sample with no activity at all, the newest of its GPU (stands for the cap).
    samples(g10[0], [7300], mem_used_mib=2048.0, power_w=100.0)
    allocate(external_id="a", gpus=g10[:2], start=rng.randrange(0, 900), end=4444)
    allocate(external_id="b", gpus=[g10[0]], start=2001, end=None, proj=project("p2"))
    allocate(external_id="c", gpus=[g15[0], g7[0], g5[0], mig], start=17, end=3599)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_grid_path_and_exact_statement_give_the_same_rows(settings, seed):
    _random_fleet(seed)
    exact = _rerun(settings, "never")
    grid = _rerun(settings, "always")
    assert grid == exact
    again = _rerun(settings, "never")
    assert again == exact


def test_clean_buckets_inside_an_exact_island_are_written_once(settings):
    """Off-grid buckets close together make one island for the exact statement, clean
    buckets between them included: the grid path must leave those to it (a row written by
    both would break the key; one left out by both would be missing)."""
    (gpu,) = fleet(interval=10)
    # Buckets 0-2700 on the grid but for one sample off it in buckets 600 and 1800, whose
    # island (they are within the merging gap) takes 900-1500 along; 1200 and its
    # neighbours are clean, so the grid path could take it.
    offsets = list(range(0, 3000, 10))
    offsets[offsets.index(610)] = 613
    offsets[offsets.index(1810)] = 1811
    samples(gpu, offsets, util_pct=lambda o: (o // 10) % 101, power_w=300.0)
    exact = _rerun(settings, "never", mixed=False)
    grid = _rerun(settings, "always", mixed=False)
    assert grid == exact
    # Ten buckets and the empty one the last sample's time reaches.
    assert len(grid["5m"]) == 11


def test_grid_path_compiled_by_jit_gives_the_same_rows(settings, postgres_only, monkeypatch):
    """The grid pass runs JIT-compiled at scale: forced here for a small fleet, the rows are
    those of the exact statement all the same."""
    from django.db import connection

    from apps.telemetry import rollups

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_jit_available()")
        # Without a JIT provider "jit = on" compiles nothing (and is no error).
        require(cursor.fetchone()[0], "this PostgreSQL server has no JIT provider")
    monkeypatch.setattr(rollups, "_JIT_ABOVE_COST", 0)
    monkeypatch.setattr(rollups, "_JIT_OPTIMIZE_ABOVE_COST", 0)
    _random_fleet(4)
    exact = _rerun(settings, "never")
    assert _rerun(settings, "always") == exact


def test_grid_path_hand_computed(settings):
    settings.FLOPWATCH_ROLLUP_GRID_PATH = "always"
    (gpu,) = fleet(interval=10)
    # Bucket 0 full but for the sample at 100; bucket 300 starts at 310 (300 missing).
    offsets = [o for o in range(0, 600, 10) if o not in (100, 300)]
    samples(gpu, offsets, util_pct=50.0, mem_used_mib=2048.0, power_w=200.0)
    assert rollups_run_pending(now=NOW)["grid_rows"] == 3
    first = r5(gpu, 0)
    # 29 samples at 10 s each; 90 stands for 20 s (up to 110), 290 for 20 s of which 10
    # spill into the next bucket: the bucket is covered whole.
    assert (first.samples, first.covered_s, first.missing_s) == (29, 300, 0)
    assert first.busy_s == pytest.approx(0.5 * 300)
    # Energy: every sample for its whole duration, 90's and 290's 20 s included.
    assert first.energy_j == pytest.approx(200.0 * (27 * 10 + 20 + 20))
    second = r5(gpu, 300)
    # 290's 10 s, 310..580 at 10 s, and the newest (590) for 20 s of which 10 spill.
    assert (second.samples, second.covered_s, second.missing_s) == (29, 300, 0)
    assert GpuRollup5m.objects.filter(gpu=gpu, bucket=T0 + 600).get().covered_s == 10


def test_grid_path_counts_a_full_bucket_at_the_shortest_interval(settings):
    """The counts are fields of two sums (``_unpacked``): a bucket as full as the grid path
    takes them (60 samples at 5 s; 50 at 6 s on SQLite), every field counting in every
    sample, reads back exact, and so does one where each field counts a different number."""
    from django.db import connection

    settings.FLOPWATCH_ROLLUP_GRID_PATH = "always"
    interval = 5 if connection.vendor == "postgresql" else 6
    per_bucket = 300 // interval
    full, mixed = fleet(gpus=2, interval=interval)
    # Every sample idle and holding memory, with util_pct, sm_active, memory and power.
    samples(
        full,
        range(0, 300, interval),
        util_pct=0.0,
        sm_active=0.0,
        mem_used_mib=4096.0,
        power_w=100.0,
    )
    # No sm_active (activity from util_pct); power in every other sample, memory in every
    # third; the first 10 samples idle, those of them with memory holding it.
    samples(
        mixed,
        range(0, 300, interval),
        util_pct=lambda o: 0.0 if o < 10 * interval else 80.0,
        mem_used_mib=lambda o: 2048.0 if (o // interval) % 3 == 0 else None,
        power_w=lambda o: 300.0 if (o // interval) % 2 == 0 else None,
    )
    # Both buckets and the empty ones after them, where the last samples' time runs on.
    summary = rollups_run_pending(now=NOW)
    assert summary["grid_rows"] == summary["gpu_rows"] == 4
    row = r5(full, 0)
    assert (row.samples, row.covered_s, row.idle_s, row.mem_held_idle_s) == (
        per_bucket,
        300,
        300,
        300,
    )
    assert (row.sm_active_mean, row.mem_used_mean_mib, row.power_mean_w) == (0.0, 4096.0, 100.0)
    assert row.activity_source == "sm_active"
    row = r5(mixed, 0)
    held = len([k for k in range(10) if k % 3 == 0])
    assert (row.samples, row.covered_s) == (per_bucket, 300)
    assert (row.idle_s, row.mem_held_idle_s) == (10 * interval, held * interval)
    assert row.util_mean == pytest.approx(80.0 * (per_bucket - 10) / per_bucket)
    assert (row.sm_active_mean, row.mem_used_mean_mib, row.power_mean_w) == (None, 2048.0, 300.0)
    assert row.energy_j == pytest.approx(300.0 * interval * len(range(0, per_bucket, 2)))
    assert row.activity_source == "util"


def test_parallel_workers_setting_reaches_postgresql(settings, postgres_only):
    from django.db import connection, transaction

    from apps.telemetry.rollups import session_tune

    for workers, expected in ((1, "1"), (0, "0")):
        settings.FLOPWATCH_ROLLUP_PARALLEL_WORKERS = workers
        with transaction.atomic(), connection.cursor() as cursor:
            session_tune(cursor)
            cursor.execute("SHOW max_parallel_workers_per_gather")
            assert cursor.fetchone()[0] == expected
