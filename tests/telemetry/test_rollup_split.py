"""A rollup split by time over several connections gives the rows an unsplit one gives, and a
split run that fails after some of its parts committed leaves its work marked: the next run
ends where an uninterrupted one does. PostgreSQL only (SQLite has one writer); the parts
commit on connections of their own, so these tests use a real, committed database."""

from __future__ import annotations

import datetime as dt
import threading
import time

import psycopg
import pytest

from apps.telemetry import rollups
from apps.telemetry.models import (
    AllocationGpuHourly,
    CapacityDaily,
    GpuRollup5m,
    RollupPending,
    RollupPendingDay,
    UsageDaily,
    UsageHourly,
)
from apps.telemetry.pending import rollup_pending_mark
from tests.conftest import test_database_url
from tests.telemetry.test_rollup_grid import _random_fleet
from tests.telemetry.test_rollup_helpers import NOW, T0, rounded_snapshot

DAY0 = dt.date(1970, 1, 1) + dt.timedelta(days=T0 // 86400)


def _marks() -> set[tuple[int, int]]:
    """What the world marked: its samples' buckets and its allocations' spans."""
    return set(RollupPending.objects.values_list("gpu_id", "bucket"))


def _remark_all(marks: set[tuple[int, int]]) -> None:
    for model in (GpuRollup5m, AllocationGpuHourly, UsageHourly, UsageDaily, CapacityDaily):
        model.objects.all().delete()
    rollup_pending_mark(pairs=marks)


def _reference(settings, seed: int) -> tuple[set[tuple[int, int]], dict]:
    """The random world of ``seed`` rolled up unsplit: what it marked and the rows; then
    every rollup row gone and the same marks pending again."""
    _random_fleet(seed)
    marks = _marks()
    settings.FLOPWATCH_ROLLUP_CONNECTIONS = 1
    assert rollups.rollups_run_pending(now=NOW)["parts"] == 1
    whole = rounded_snapshot()
    assert whole["5m"] and whole["hourly"] and whole["usage"]
    _remark_all(marks)
    return marks, whole


def _split_settings(settings, connections: int) -> None:
    settings.FLOPWATCH_ROLLUP_CONNECTIONS = connections
    settings.FLOPWATCH_ROLLUP_SPLIT_MIN_BUCKETS = 2


@pytest.mark.parametrize("mode", ["never", "always"])
def test_split_run_gives_the_rows_of_an_unsplit_one(settings, postgres_committed, mode):
    settings.FLOPWATCH_ROLLUP_GRID_PATH = mode
    marks, whole = _reference(settings, 7)
    for connections in (2, 3):
        _remark_all(marks)
        _split_settings(settings, connections)
        summary = rollups.rollups_run_pending(now=NOW)
        # Marks over many hours (samples, and allocations to NOW): as many parts as
        # connections, cut at whole hours.
        assert summary["parts"] == connections
        assert not RollupPending.objects.exists()
        assert not RollupPendingDay.objects.exists()
        assert rounded_snapshot() == whole


def test_split_run_recomputes_marks_with_holes_beside_unbroken_runs(settings, postgres_committed):
    """A part keeps a GPU's claimed marks as one run when they are unbroken and bucket by
    bucket when not: islands of both kinds, here beside each other, give the same rows."""
    marks, whole = _reference(settings, 11)
    settings.FLOPWATCH_ROLLUP_CONNECTIONS = 1
    rollups.rollups_run_pending(now=NOW)
    assert rounded_snapshot() == whole
    by_gpu: dict[int, list[int]] = {}
    for gpu_id, bucket in sorted(marks):
        by_gpu.setdefault(gpu_id, []).append(bucket)
    holed = min(by_gpu)
    # Every eighth bucket of one GPU (islands far apart), all the buckets of the others;
    # the stale rows of the marked buckets are spoiled, so each must be recomputed.
    chosen = {(g, b) for g, buckets in by_gpu.items() for b in buckets if g != holed}
    chosen |= {(holed, b) for b in by_gpu[holed][::8]}
    spoiled = 0
    for gpu_id, bucket in chosen:
        spoiled += GpuRollup5m.objects.filter(gpu_id=gpu_id, bucket=bucket).update(busy_s=-1.0)
    assert spoiled > 0
    rollup_pending_mark(pairs=chosen)
    _split_settings(settings, 2)
    summary = rollups.rollups_run_pending(now=NOW)
    assert summary["parts"] == 2
    assert summary["buckets"] == len(chosen)
    assert not RollupPending.objects.exists()
    assert rounded_snapshot() == whole


def test_split_run_in_chunks_of_whole_hours(settings, postgres_committed):
    _, whole = _reference(settings, 8)
    _split_settings(settings, 2)
    # About an hour and a half of marks per chunk: each chunk takes whole hours.
    summary = rollups.rollups_run_pending(now=NOW, chunk=int(RollupPending.objects.count() / 2))
    assert summary["chunks"] >= 2
    assert not RollupPending.objects.exists()
    assert rounded_snapshot() == whole


def test_split_run_failing_after_a_part_committed_leaves_its_work_marked(
    settings, postgres_committed, monkeypatch
):
    _, whole = _reference(settings, 9)
    total = RollupPending.objects.count()
    _split_settings(settings, 2)

    compute = rollups._part_compute
    first_part_done = threading.Event()
    url = test_database_url()
    cuts: list[int] = []

    def failing(cursor, *, part, **kwargs):
        if part[0] == rollups._EVER[0]:
            return compute(cursor, part=part, **kwargs)
        # The later part waits for the earlier one to commit (its own marks gone, seen
        # from another connection), then fails: a worker dying between two parts.
        # The fleet's longest interval is 15 s: a mark reaches one bucket either side, so
        # the earlier part releases every mark up to one bucket before the cut.
        cuts.append(cut := part[0])
        deadline = time.monotonic() + 30
        with psycopg.connect(url, autocommit=True) as other:
            while time.monotonic() < deadline:
                (left,) = other.execute(
                    "SELECT COUNT(*) FROM telemetry_rolluppending WHERE bucket < %s",
                    [cut - 300],
                ).fetchone()
                if left == 0:
                    first_part_done.set()
                    break
                time.sleep(0.05)
        raise RuntimeError("worker lost")

    monkeypatch.setattr(rollups, "_part_compute", failing)
    with pytest.raises(RuntimeError, match="worker lost"):
        rollups.rollups_run_pending(now=NOW)
    assert first_part_done.is_set()
    (cut,) = cuts
    # The first part's work is committed and its own marks released; the marks near the
    # cut, the second part's and the days the run touched are all still there.
    left = RollupPending.objects.count()
    assert 0 < left < total
    assert RollupPending.objects.filter(bucket__gte=cut - 300, bucket__lt=cut + 300).exists()
    assert RollupPendingDay.objects.filter(day=DAY0).exists()
    assert GpuRollup5m.objects.filter(bucket__lt=cut).exists()
    assert not GpuRollup5m.objects.filter(bucket__gte=cut).exists()

    monkeypatch.setattr(rollups, "_part_compute", compute)
    rollups.rollups_run_pending(now=NOW)
    assert not RollupPending.objects.exists()
    assert not RollupPendingDay.objects.exists()
    assert rounded_snapshot() == whole


def test_pending_days_are_rewritten_by_the_next_run(settings, postgres_committed):
    """Day marks left by a split run that died are consumed by any later run, even one with
    no bucket to recompute and a clock past the day."""

    def days() -> dict:
        return {
            "usage": sorted(
                UsageDaily.objects.filter(day=DAY0).values_list("project_id", "busy_s")
            ),
            "capacity": sorted(
                CapacityDaily.objects.filter(day=DAY0).values_list("gpu_model", "capacity_s")
            ),
        }

    _random_fleet(10)
    rollups.rollups_run_pending(now=NOW)
    before = days()
    assert before["usage"] and before["capacity"]
    UsageDaily.objects.all().delete()
    CapacityDaily.objects.all().delete()
    RollupPendingDay.objects.create(day=DAY0)
    assert not RollupPending.objects.exists()
    # Two days later: the tick's own days (today, yesterday) no longer include DAY0.
    rollups.rollups_run_pending(now=NOW + dt.timedelta(days=2))
    assert not RollupPendingDay.objects.exists()
    assert days() == before
