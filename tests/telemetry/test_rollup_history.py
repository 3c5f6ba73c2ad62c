# ruff: noqa: S608 -- the SQL here interpolates only our table names and GPU ids.
"""A tick costs what its work costs, not what the history kept costs: the rollup reads and
replaces the 5-minute and hourly rows it recomputes by key, never by a pass over the whole
table. (Before, on PostgreSQL, a tick of 1,000 GPUs with 41 days of 5-minute rows kept took
5.3-5.9 s instead of 0.6, and with 180 days kept it would not finish within its minute.)

Each statement of the rollup that names one of those tables is explained, just before it
runs, in the state it runs in (the work tables filled, the planner settings of the moment),
and no plan may read the whole table."""

from __future__ import annotations

import contextlib
import re

import pytest
from django.db import connection

from apps.telemetry.models import AllocationGpuHourly, GpuRollup5m
from apps.telemetry.rollups import rollups_run_pending
from apps.tenancy.models import Allocation, AllocationGpu
from tests.telemetry.test_rollup_helpers import T0, allocate, at, fleet, hourly, project, samples

pytestmark = pytest.mark.django_db

HISTORY_DAYS = 60
WATCHED = (GpuRollup5m._meta.db_table, AllocationGpuHourly._meta.db_table)
# Words that may follow a table's name in our SQL without being its alias.
_NOT_ALIASES = {"WHERE", "ON", "JOIN", "USING", "SET", "CROSS", "LEFT", "INNER", "GROUP", "AS"}
_NAMED = re.compile(r'"?\b(' + "|".join(WATCHED) + r')\b"?(?:\s+(?:AS\s+)?([A-Za-z_]\w*))?')


def history_write(*, gpus, days: int) -> None:
    """``days`` of 5-minute rows of ``gpus`` before T0, and the hourly rows of a job that
    held them all that time (closed at T0, nothing pending): what a fleet keeps."""
    old = Allocation.objects.create(
        source="test", external_id="old-job", project=project(), start=at(-days * 86400), end=at(0)
    )
    AllocationGpu.objects.bulk_create([AllocationGpu(allocation=old, gpu=g) for g in gpus])
    ids = ", ".join(str(g.pk) for g in gpus)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH RECURSIVE n (k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM n WHERE k < %s)
            INSERT INTO {WATCHED[0]} (gpu_id, bucket, samples, covered_s, missing_s,
                allocated_s, busy_s, idle_s, mem_held_idle_s, util_mean, util_max,
                sm_active_mean, mem_used_mean_mib, mem_used_max_mib, power_mean_w, energy_j,
                activity_source)
            SELECT g.id, %s - 300 * n.k, 30, 300, 0, 300, 150, 100, 50, 50, 90, NULL, 1000,
                   2000, 300, 90000, 'util'
            FROM n CROSS JOIN fleet_gpu g WHERE g.id IN ({ids})
            """,
            [days * 288, T0],
        )
        cursor.execute(
            f"""
            WITH RECURSIVE n (k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM n WHERE k < %s)
            INSERT INTO {WATCHED[1]} (allocation_id, gpu_id, hour, allocated_s, observed_s,
                busy_s, idle_s, mem_held_idle_s)
            SELECT %s, g.id, %s - 3600 * n.k, 3600, 3600, 1800, 1200, 600
            FROM n CROSS JOIN fleet_gpu g WHERE g.id IN ({ids})
            """,
            [days * 24, old.pk, T0],
        )
        if connection.vendor == "postgresql":
            # As autovacuum would have by then: the planner knows how large they are.
            for table in WATCHED:
                cursor.execute(f"ANALYZE {table}")


@contextlib.contextmanager
def plans_recorded(wanted, plans: list[tuple[str, list[str]]]):
    """(SQL, plan lines) of every statement for which ``wanted(sql)`` is true, explained just
    before it runs: in the transaction's state and planner settings of that moment."""
    explain = "EXPLAIN " if connection.vendor == "postgresql" else "EXPLAIN QUERY PLAN "

    def explain_first(execute, sql, params, many, context):
        if not many and wanted(sql):
            # The driver's own cursor: past this wrapper.
            cursor = context["cursor"].cursor
            cursor.execute(explain + sql, params)
            plans.append((sql, [str(row[-1]) for row in cursor.fetchall()]))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(explain_first):
        yield


def _names_watched(sql: str) -> bool:
    return bool(_NAMED.search(sql)) and not sql.lstrip().upper().startswith(("ANALYZE", "TRUNCATE"))


def _whole_reads(sql: str, plan: list[str]) -> list[str]:
    """Where ``plan`` (of ``sql``) reads one of the watched tables whole, what tells it (the
    whole plan on PostgreSQL, those steps on SQLite); else nothing."""
    if connection.vendor == "postgresql":
        seq = re.compile(r"Seq Scan on (" + "|".join(WATCHED) + r")\b")
        return plan if any(seq.search(line) for line in plan) else []
    names = set()
    for table, alias in _NAMED.findall(sql):
        names.add(table)
        if alias and alias.upper() not in _NOT_ALIASES:
            names.add(alias)
    # SQLite's SCAN is a pass over the table (or over a whole index of it); SEARCH is by key.
    return [d for d in plan if d.startswith("SCAN ") and d.split()[1] in names]


@pytest.mark.parametrize("path", ["never", "always"], ids=["exact", "grid"])
def test_a_tick_reads_the_rollup_tables_by_key_whatever_history_is_kept(path, settings):
    settings.FLOPWATCH_ROLLUP_GRID_PATH = path
    gpus = fleet(gpus=2, interval=10)
    history_write(gpus=gpus, days=HISTORY_DAYS)
    allocation = allocate(external_id="job-1", gpus=gpus, start=0, end=None)
    for gpu in gpus:
        samples(gpu, range(0, 3600, 10), util_pct=50.0, mem_used_mib=2048.0, power_w=300.0)
    plans: list[tuple[str, list[str]]] = []
    with plans_recorded(_names_watched, plans):
        # The backlog of the first hour, then a tick after one more minute of samples.
        rollups_run_pending(now=at(3600))
        for gpu in gpus:
            samples(gpu, range(3600, 3660, 10), util_pct=50.0, mem_used_mib=2048.0)
        rollups_run_pending(now=at(3660))
    found = [
        (" ".join(sql.split())[:300], reads)
        for sql, plan in plans
        if (reads := _whole_reads(sql, plan))
    ]
    assert not found, "statements reading a whole rollup table:\n" + "\n".join(
        f"{sql}\n    " + "\n    ".join(reads) for sql, reads in found
    )
    # And the numbers are those of the work, next to the history left as it was (but for
    # the buckets just before T0, within a new sample's reach, which raw now says are empty).
    first = hourly(allocation, gpus[0], 0)
    assert (first.allocated_s, first.observed_s) == (3600, 3600)
    assert first.busy_s == pytest.approx(1800.0)
    kept = GpuRollup5m.objects.filter(gpu=gpus[0], bucket__lt=T0 - 3600)
    assert kept.count() == HISTORY_DAYS * 288 - 12
    assert GpuRollup5m.objects.get(gpu=gpus[0], bucket=T0 - 3900).busy_s == 150
    assert AllocationGpuHourly.objects.filter(hour__lt=T0).count() == 2 * HISTORY_DAYS * 24


def test_gap_starters_are_read_one_by_one_also_past_the_raw_statistics(settings):
    """The newest samples lie past the raw partitions' statistics, where PostgreSQL expects
    one sample in any time range: left to choose, it reads the range once and tests every
    gap starter against each sample in it (a tick of 10,000 GPUs: minutes)."""
    settings.FLOPWATCH_ROLLUP_GRID_PATH = "always"
    gpus = fleet(gpus=2, interval=10)
    for gpu in gpus:
        samples(gpu, range(0, 3600, 10), util_pct=50.0, mem_used_mib=2048.0, power_w=300.0)
    rollups_run_pending(now=at(3600))
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE telemetry_rawsample")  # as autovacuum would by now
    for gpu in gpus:
        # A minute more with a missing sample at 3630: the one at 3620 starts a gap.
        samples(gpu, [3600, 3610, 3620, 3640, 3650], util_pct=25.0, mem_used_mib=2048.0)
    plans: list[tuple[str, list[str]]] = []
    with plans_recorded(lambda sql: sql.lstrip().startswith("INSERT INTO fw_gs "), plans):
        rollups_run_pending(now=at(3660))
    assert plans, "the grid path read no gap starters"
    for _, plan in plans:
        # The first relation read is the outer side: the gap starters, each then probed.
        first = next(line for line in plan if re.search(r"\b(Scan|SCAN|SEARCH)\b", line))
        assert re.search(r"(Seq Scan on fw_gsk|^SCAN k\b)", first), "\n".join(plan)
    # 3620 stands for the cap (20 s, over the missing sample), and so does the newest, 3650:
    # 10 + 10 + 20 + 10 + 20 s, at 25 %.
    row = GpuRollup5m.objects.get(gpu=gpus[0], bucket=T0 + 3600)
    assert (row.samples, row.covered_s) == (5, 70)
    assert row.busy_s == pytest.approx(17.5)
