# ruff: noqa: S608 -- SQL here interpolates only constants and our own table names.
"""Raw samples -> rollup tables, set-based in the database.

How a number is counted (DESIGN.md "Metrics and definitions", made exact here):

* **Activity** of a sample: ``sm_active`` when present, else ``util_pct / 100``; on a MIG
  instance ``gr_engine_active`` comes first (then ``sm_active``, then ``util_pct``). A sample
  with none of them has no activity: its time is not *covered* (it can say neither busy nor
  idle), although it still ends the previous sample's time.
* **Duration**: a sample stands for the time until the next sample of the same GPU, capped at
  ``2 x sample_interval_s`` of its node; the last sample before a gap (or the newest sample)
  stands for the cap. The rest of a gap is missing data.
* A sample's time is **split at 5-minute boundaries** (a sample at 298 s with 20 s counts 2 s in
  its own bucket and 18 s in the next) and **intersected with allocation spans** to the second.
* **Idle**: activity below ``FLOPWATCH_IDLE_ACTIVITY`` (default 0.01); **memory-held idle**:
  idle while ``mem_used_mib > 1024``; **busy** = activity x seconds.
* **Allocated** seconds of an allocation x GPU x hour are its span inside the hour whether
  observed or not (an open allocation runs until ``now``). Two allocations holding one GPU at
  the same time are each counted the full time (each was handed the GPU and each pays for it);
  ``GpuRollup5m.allocated_s`` and capacity count the union (the GPU was held once).
* **Capacity** of a UTC day counts physical GPUs (MIG instances are part of their parent) from
  their ``first_seen_at`` (a GPU registered by hand without it counts from the day's start)
  until the day's end or ``now``; a physical GPU is allocated while it or any of its MIG
  instances is held.

Crash safety: one chunk of pending buckets is claimed, recomputed and deleted from
``RollupPending`` in one transaction; a worker killed in the middle rolls back and leaves the
marks, so the next run does the same work again. Rows are replaced whole (delete + insert),
never incremented, so any number of runs, in any order, ends with the same rows. A large
chunk is split by time over several connections, each part a transaction of its own; what a
part cannot finish alone (marks near a cut, the days' rows) stays marked until every part
has committed (see "Split runs" below).

Every aggregation is one ``INSERT ... SELECT`` over all claimed buckets at once (window
``LEAD`` for durations, ``GROUP BY`` for buckets and hours), the same SQL on PostgreSQL and
SQLite; Python only loops over allocations and days, never over samples. Large work on the
nodes' interval grid takes the grid path instead of ``LEAD`` (see "Grid path" below): the
same numbers without sorting the samples.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import math
import time
from collections import defaultdict
from collections.abc import Callable

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from apps.telemetry.models import (
    AllocationGpuHourly,
    CapacityDaily,
    GpuRollup5m,
    RawSample,
    RollupPending,
    RollupPendingDay,
    UsageDaily,
    UsageHourly,
)

BUCKET_S = 300
HOUR_S = 3600
DAY_S = 86400
MEM_HELD_MIB = 1024.0
# Advisory lock key of the rollup on PostgreSQL ("flopwatch rollup" as a number): only one
# worker recomputes at a time, a second one returns at once instead of fighting over rows.
_LOCK_KEY = 0x0F10_2011
# gpu_id * stride + ts orders samples by GPU, then time, in one bigint (ts < 2^33, i.e.
# before the year 2242; gpu_id < 2^29).
_GPU_KEY_STRIDE = 2**34


def idle_threshold() -> float:
    return float(getattr(settings, "FLOPWATCH_IDLE_ACTIVITY", 0.01))


def _t(model) -> str:
    return model._meta.db_table


def _epoch(moment: dt.datetime) -> int:
    return math.floor(moment.timestamp())


def _pg() -> bool:
    return connection.vendor == "postgresql"


# --- Work tables ------------------------------------------------------------------------------
# Per-connection temporary tables hold the claimed buckets and what they touch, so every step
# is one set-based statement joined to them.

_TEMP_TABLES = {
    "fw_claim": "gpu_id bigint, bucket bigint, marked_at {ts}",
    # Claimed marks of one GPU forming one unbroken run of ``n`` buckets from ``lo`` to
    # ``hi`` (bucket starts), held as that run instead of row by row (see _split_run).
    "fw_run": "gpu_id bigint, lo bigint, hi bigint, n bigint",
    "fw_gpu": "gpu_id bigint PRIMARY KEY, cap bigint, mig integer",
    "fw_isl": "gpu_id bigint, tlo bigint, thi bigint",
    "fw_src": "gpu_id bigint, bucket bigint",
    "fw_pisl": "gpu_id bigint, tlo bigint, thi bigint",
    "fw_off": "j bigint",
    "fw_num": "n bigint",
    "fw_hour": "gpu_id bigint, hour bigint",
    "fw_alloc": "allocation_id bigint, gpu_id bigint, s bigint, e bigint",
    "fw_span": "gpu_id bigint, s bigint, e bigint",
    "fw_q": (
        "allocation_id bigint, gpu_id bigint, hour bigint, cov double precision, "
        "busy double precision, idle double precision, held double precision"
    ),
    "fw_hisl": "gpu_id bigint, lo bigint, hi bigint",
    "fw_whole": (
        "allocation_id bigint, gpu_id bigint, hour bigint, cov double precision, "
        "busy double precision, idle double precision, held double precision"
    ),
}
# SQLite's release DELETE probes fw_claim once per pending row (it has no hash join;
# PostgreSQL's hashes the claim and does without the index): built by the claim, on SQLite.
_CLAIM_INDEX = "(gpu_id, bucket)"
_TEMP_INDEXES = {
    "fw_hour": "(gpu_id, hour)",
    "fw_alloc": "(gpu_id, s)",
    "fw_span": "(gpu_id, s)",
    "fw_isl": "(gpu_id, tlo)",
}


def _temp_tables_reset(cursor) -> None:
    ts_type = "timestamptz" if _pg() else "text"
    for name, columns in _TEMP_TABLES.items():
        cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {name} ({columns.format(ts=ts_type)})")
        cursor.execute(f"DELETE FROM {name}")
    for name, columns in _TEMP_INDEXES.items():
        cursor.execute(f"CREATE INDEX IF NOT EXISTS {name}_idx ON {name} {columns}")


def _plan(cursor, **enable: bool) -> None:
    """Switch PostgreSQL planner methods for the rest of the transaction, or until switched
    back: ``_plan(cursor, nestloop=False)``. Nothing on SQLite."""
    if _pg():
        for method, on in enable.items():
            cursor.execute(f"SET LOCAL enable_{method} = {'on' if on else 'off'}")


# PostgreSQL's default thresholds, in its planner's cost units (the grid pass costs about 0.12
# per sample).
_JIT_ABOVE_COST = 100_000
_JIT_OPTIMIZE_ABOVE_COST = 500_000


def _jit(cursor, *, on: bool) -> None:
    """PostgreSQL's JIT compilation for the statements that follow, or off again (the rollup
    runs without it, see ``session_tune``; nothing on SQLite). On for the grid path's pass
    over raw samples only: compiling its expressions and tuple deforming takes about 0.1 s
    and saves about a quarter of the pass (5M samples: 1.15-1.25 s instead of 1.6). Set
    here rather than taken from the server, where JIT is often switched off wholesale; the
    planner still compiles only a statement whose cost passes the thresholds (PostgreSQL's
    defaults: about a million samples, and four million for LLVM's optimization, which gives
    most of the gain). Inlining adds compile time and nothing measurable here."""
    if not _pg():
        return
    if on:
        cursor.execute("SET LOCAL jit = on")
        cursor.execute(f"SET LOCAL jit_above_cost = {_JIT_ABOVE_COST}")
        cursor.execute(f"SET LOCAL jit_optimize_above_cost = {_JIT_OPTIMIZE_ABOVE_COST}")
        cursor.execute("SET LOCAL jit_inline_above_cost = -1")
    else:
        cursor.execute("SET LOCAL jit = off")


def _rows_inserted(cursor) -> int:
    """Rows the last INSERT wrote (SQLite's driver reports no count for a statement that
    starts with WITH)."""
    if cursor.rowcount >= 0:
        return cursor.rowcount
    cursor.execute("SELECT changes()")
    return cursor.fetchone()[0]


def _rows_load(cursor, table: str, columns: str, rows: list[tuple]) -> None:
    """Insert ``rows`` into a work table: on PostgreSQL one statement over arrays (a
    thousand spans: 50 ms as one INSERT per row, 2 ms so), elsewhere row by row."""
    if not rows:
        return
    names = [c.strip() for c in columns.split(",")]
    if _pg():
        arrays = ", ".join(["CAST(%s AS bigint[])"] * len(names))
        cursor.execute(
            f"INSERT INTO {table} ({columns}) SELECT * FROM unnest({arrays})",
            [list(column) for column in zip(*rows, strict=True)],
        )
        return
    marks = ", ".join(["%s"] * len(names))
    cursor.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", rows)


def _hours_listed(cursor) -> list[int]:
    """The distinct hours of ``fw_hour``."""
    cursor.execute("SELECT DISTINCT hour FROM fw_hour ORDER BY hour")
    return [int(row[0]) for row in cursor.fetchall()]


def _in_list(column: str, values: list[int]) -> tuple[str, list]:
    """``column`` among ``values`` as SQL and its parameters: the values themselves in the
    statement, so the planner reads exactly their rows through an index on ``column``
    instead of hashing a work table it knows little about and reading the whole table."""
    if not values:
        return "1 = 0", []
    if _pg():
        # bigint[] like the columns: PostgreSQL hashes a long list only for the same type
        # (an int[] is searched element by element: 1,000 comparisons per raw sample for a
        # list of GPUs).
        return f"{column} = ANY(CAST(%s AS bigint[]))", [values]
    return f"{column} IN ({', '.join(str(int(v)) for v in values)})", []


def _analyze(cursor, *names: str) -> None:
    # Autovacuum never sees temporary tables: without statistics PostgreSQL guesses a
    # thousand rows and picks nested loops over a hundred thousand.
    if _pg():
        for name in names:
            cursor.execute(f"ANALYZE {name}")


def _islands_build(
    cursor, *, src: str, dst: str, pad: int, gap: int, runs: str | None = None
) -> None:
    """Collapse (gpu_id, bucket) rows of ``src`` into per-GPU ranges [tlo, thi) widened by
    ``pad`` seconds each side; buckets closer than ``gap`` fall into one range (the buckets
    between them are recomputed too, which keeps the read ranges of two islands apart).
    ``src`` holds each (gpu_id, bucket) once; ``runs`` (gpu_id, lo, hi, n), when given,
    adds unbroken runs of buckets, none of them in ``src`` as well; ``dst`` starts empty."""
    spans = f"SELECT gpu_id, bucket AS lo, bucket AS hi, 1 AS n FROM {src}"
    if runs is not None:
        spans += f" UNION ALL SELECT gpu_id, lo, hi, n FROM {runs}"
    # Most GPUs have one unbroken run of buckets, or all of theirs within ``gap`` (a
    # backlog, an import, the newest buckets): a GROUP BY finds those, and only the rest are
    # sorted by bucket to be cut into islands (334,000 claimed buckets: 0.7 s -> 0.2 s).
    cursor.execute(
        f"""
        INSERT INTO {dst} (gpu_id, tlo, thi)
        SELECT gpu_id, MIN(lo) - %s, MAX(hi) + {BUCKET_S} + %s
        FROM ({spans}) s
        GROUP BY gpu_id
        HAVING MAX(hi) - MIN(lo) <= %s OR SUM(n) * {BUCKET_S} = MAX(hi) - MIN(lo) + {BUCKET_S}
        """,
        [pad, pad, gap],
    )
    # The spans of one GPU are disjoint, so in order of their starts each one's end is the
    # largest yet.
    cursor.execute(
        f"""
        INSERT INTO {dst} (gpu_id, tlo, thi)
        SELECT gpu_id, MIN(lo) - %s, MAX(hi) + {BUCKET_S} + %s
        FROM (
            SELECT gpu_id, lo, hi,
                   SUM(brk) OVER (PARTITION BY gpu_id ORDER BY lo
                                  ROWS UNBOUNDED PRECEDING) AS grp
            FROM (
                SELECT gpu_id, lo, hi,
                       CASE WHEN lo - LAG(hi) OVER (PARTITION BY gpu_id ORDER BY lo)
                                 <= %s THEN 0 ELSE 1 END AS brk
                FROM ({spans}) s
                WHERE NOT EXISTS (SELECT 1 FROM {dst} o WHERE o.gpu_id = s.gpu_id)
            ) x
        ) y
        GROUP BY gpu_id, grp
        """,
        [pad, pad, gap],
    )


def _pieces_sql(*, islands: str, pad: int) -> str:
    """SQL of every piece of sample time inside the islands' buckets.

    Columns: gpu_id, b (bucket), j (0 = the sample's own bucket), lo, hi (epoch seconds of
    the piece), act (activity or NULL), prof (1 profiling source, 0 util, NULL none),
    util_pct, sm, mem, power. Samples are read ``pad`` seconds beyond each island so that
    every sample inside sees its successor and every sample spilling in is present: at
    least the largest cap.
    """
    raw = _t(RawSample)
    return f"""
        SELECT p.gpu_id, p.b, p.j, p.lo, p.hi, p.act, p.prof, p.util_pct, p.sm, p.mem, p.power
        FROM (
            SELECT s.gpu_id, s.tlo, s.thi, s.ts + 0 AS ts, s.b0 + {BUCKET_S} * o.j AS b, o.j,
                   CASE WHEN o.j = 0 THEN s.ts ELSE s.b0 + {BUCKET_S} * o.j END AS lo,
                   CASE WHEN s.ts + s.d < s.b0 + {BUCKET_S} * (o.j + 1) THEN s.ts + s.d
                        ELSE s.b0 + {BUCKET_S} * (o.j + 1) END AS hi,
                   s.act, s.prof, s.util_pct, s.sm, s.mem, s.power
            FROM (
                SELECT r.gpu_id, r.tlo, r.thi, r.ts, r.ts - r.ts %% {BUCKET_S} AS b0,
                       CASE WHEN r.nts IS NULL OR r.nts - r.ts > r.cap THEN r.cap
                            ELSE r.nts - r.ts END AS d,
                       CASE WHEN r.mig = 1
                            THEN COALESCE(r.gr_engine_active, r.sm_active, r.util_pct / 100.0)
                            ELSE COALESCE(r.sm_active, r.util_pct / 100.0) END AS act,
                       CASE WHEN r.mig = 1 AND (r.gr_engine_active IS NOT NULL
                                                OR r.sm_active IS NOT NULL) THEN 1
                            WHEN r.mig = 0 AND r.sm_active IS NOT NULL THEN 1
                            WHEN r.util_pct IS NOT NULL THEN 0 END AS prof,
                       r.util_pct,
                       CASE WHEN r.mig = 1 THEN COALESCE(r.gr_engine_active, r.sm_active)
                            ELSE r.sm_active END AS sm,
                       r.mem_used_mib AS mem, r.power_w AS power
                FROM (
                    SELECT i.gpu_id, i.tlo, i.thi, g.cap, g.mig, x.ts, x.util_pct, x.sm_active,
                           x.gr_engine_active, x.mem_used_mib, x.power_w,
                           LEAD(x.ts) OVER (PARTITION BY x.gpu_id, i.tlo ORDER BY x.ts) AS nts
                    FROM {islands} i
                    JOIN fw_gpu g ON g.gpu_id = i.gpu_id
                    JOIN {raw} x ON x.gpu_id = i.gpu_id
                         AND x.ts >= i.tlo - {pad} AND x.ts < i.thi + {pad}
                ) r
            ) s
            JOIN fw_off o ON s.b0 + {BUCKET_S} * o.j < s.ts + s.d
        ) p
        WHERE p.hi > p.lo AND p.b >= p.tlo AND p.b < p.thi
    """


# --- The steps --------------------------------------------------------------------------------


def _claim(cursor, *, limit: int) -> int:
    pending = _t(RollupPending)
    # SQLite's index is built after the rows are in: a third of the time of keeping it up
    # to date row by row (a backlog claims hundreds of thousands).
    cursor.execute("DROP INDEX IF EXISTS fw_claim_idx")
    cursor.execute(f"SELECT COUNT(*) FROM {pending}")
    if cursor.fetchone()[0] <= limit:
        # Everything fits: no sort to pick the oldest (0.3 s for a 334,000-bucket backlog).
        # Marks arriving meanwhile may make the claim a little larger than the limit.
        cursor.execute(
            f"INSERT INTO fw_claim (gpu_id, bucket, marked_at) "
            f"SELECT gpu_id, bucket, marked_at FROM {pending}"
        )
    else:
        cursor.execute(
            f"INSERT INTO fw_claim (gpu_id, bucket, marked_at) "
            f"SELECT gpu_id, bucket, marked_at FROM {pending} ORDER BY bucket, gpu_id LIMIT %s",
            [limit],
        )
    claimed = _rows_inserted(cursor)
    if not _pg():
        cursor.execute(f"CREATE INDEX fw_claim_idx ON fw_claim {_CLAIM_INDEX}")
    return claimed


def _release(cursor, *, lo: int | None = None, hi: int | None = None) -> None:
    """Delete exactly the claimed marks (those with a bucket in [lo, hi) when given): a
    bucket marked again meanwhile has a newer ``marked_at`` and stays pending for the next
    run."""
    pending = _t(RollupPending)
    bounds, params = "", []
    if lo is not None:
        bounds += " AND c.bucket >= %s"
        params.append(lo)
    if hi is not None:
        bounds += " AND c.bucket < %s"
        params.append(hi)
    if _pg():
        # A join (a claimed row matches at most one mark, by the key): as a semi join
        # PostgreSQL first de-duplicates the claim, 0.3 s of 0.85 s for 334,000 marks.
        cursor.execute(
            f"""DELETE FROM {pending} p USING fw_claim c
                WHERE c.gpu_id = p.gpu_id AND c.bucket = p.bucket
                  AND c.marked_at = p.marked_at{bounds}""",
            params,
        )
        return
    # SQLite has no DELETE ... USING.
    cursor.execute(
        f"""DELETE FROM {pending} WHERE EXISTS (
              SELECT 1 FROM fw_claim c WHERE c.gpu_id = {pending}.gpu_id
              AND c.bucket = {pending}.bucket
              AND c.marked_at = {pending}.marked_at{bounds})""",
        params,
    )


def _gpus_load(cursor, *, source: str, open_allocations: bool) -> int:
    """Cap (2 intervals) and MIG flag of every GPU in ``source`` (the claim, or the islands
    of one part of a split run), and with ``open_allocations`` of every GPU an open
    allocation holds (the tick recomputes their open hours: their caps bound how far a
    sample reaches when allocation boundaries are cut); returns the largest cap."""
    held = (
        """OR g.id IN (SELECT ag.gpu_id FROM tenancy_allocationgpu ag
                      JOIN tenancy_allocation a ON a.id = ag.allocation_id
                      WHERE a."end" IS NULL)"""
        if open_allocations
        else ""
    )
    cursor.execute(
        f"""
        INSERT INTO fw_gpu (gpu_id, cap, mig)
        SELECT g.id, 2 * n.sample_interval_s, CASE WHEN g.mig_parent_id IS NULL THEN 0 ELSE 1 END
        FROM fleet_gpu g JOIN fleet_node n ON n.id = g.node_id
        WHERE g.id IN (SELECT DISTINCT gpu_id FROM {source}) {held}
        """
    )
    cursor.execute("SELECT MAX(cap) FROM fw_gpu")
    return int(cursor.fetchone()[0] or 2 * settings.FLOPWATCH_DEFAULT_INTERVAL_S)


def _allocations_load(
    cursor, *, now_ts: int, lo: int, hi: int, open_hours: bool, part: tuple[int, int]
) -> int:
    """Allocation spans (clipped at ``now``) of the GPUs in ``fw_gpu`` overlapping [lo, hi)
    into ``fw_alloc``, their per-GPU union into ``fw_span``; with ``open_hours`` the current
    and previous hour of every open allocation join the hours to recompute (so held-but-silent
    GPUs still accrue allocated time), those inside ``part`` (the time range this connection
    owns). Loops over allocations, never samples."""
    from django.db.models import Q

    from apps.tenancy.models import AllocationGpu

    cursor.execute("SELECT gpu_id FROM fw_gpu")
    gpu_ids = [row[0] for row in cursor.fetchall()]
    lo_dt = dt.datetime.fromtimestamp(lo, tz=dt.UTC)
    hi_dt = dt.datetime.fromtimestamp(hi, tz=dt.UTC)
    rows = AllocationGpu.objects.filter(gpu_id__in=gpu_ids, allocation__start__lt=hi_dt).filter(
        Q(allocation__end__isnull=True) | Q(allocation__end__gt=lo_dt)
    )
    spans: list[tuple[int, int, int, int]] = []
    for allocation_id, gpu_id, start, end in rows.values_list(
        "allocation_id", "gpu_id", "allocation__start", "allocation__end"
    ):
        s = _epoch(start)
        e = min(_epoch(end) if end is not None else now_ts, now_ts)
        if e > s:
            spans.append((allocation_id, gpu_id, s, e))
    extra_hours: set[tuple[int, int]] = set()
    if open_hours:
        hour_now = now_ts - now_ts % HOUR_S
        held = AllocationGpu.objects.filter(allocation__end__isnull=True).values_list(
            "allocation_id", "gpu_id", "allocation__start"
        )
        known = {(a, g) for a, g, _, _ in spans}
        for allocation_id, gpu_id, start in held:
            s = _epoch(start)
            if s >= now_ts:
                continue
            for hour in (hour_now - HOUR_S, hour_now):
                if hour + HOUR_S > s and part[0] <= hour < part[1]:
                    extra_hours.add((gpu_id, hour))
            if (allocation_id, gpu_id) not in known:
                spans.append((allocation_id, gpu_id, s, now_ts))
                known.add((allocation_id, gpu_id))
        if extra_hours:
            _rows_load(cursor, "fw_hour", "gpu_id, hour", sorted(extra_hours))
    if spans:
        _rows_load(cursor, "fw_alloc", "allocation_id, gpu_id, s, e", spans)
    merged: list[tuple[int, int, int]] = []
    by_gpu: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for _, gpu_id, s, e in spans:
        by_gpu[gpu_id].append((s, e))
    for gpu_id, pairs in by_gpu.items():
        for s, e in spans_union(pairs):
            merged.append((gpu_id, s, e))
    if merged:
        _rows_load(cursor, "fw_span", "gpu_id, s, e", merged)
    return len(spans)


def spans_union(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping or touching ``[start, end)`` spans merged, sorted."""
    out: list[list[int]] = []
    for s, e in sorted(pairs):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def _mean(column: str) -> str:
    """SQL of a column's mean over a group. AVG(float8) on PostgreSQL also accumulates the
    sum of squares (its state serves the variance too); SUM / COUNT is the same division of
    the same sum, cheaper."""
    if _pg():
        return f"SUM({column}) / NULLIF(COUNT({column}), 0)"
    return f"AVG({column})"


def _sql_fns() -> dict[str, str]:
    """The few spellings that differ: two-argument LEAST/GREATEST (scalar MIN/MAX on
    SQLite) and the fence that stops PostgreSQL from inlining a subquery (so the window's
    output is computed once per row rather than once per reference)."""
    if _pg():
        return {"least": "LEAST", "greatest": "GREATEST", "fence": "OFFSET 0"}
    return {"least": "MIN", "greatest": "MAX", "fence": ""}


# --- Grid path: 5-minute rows without sorting the samples --------------------------------
# A sample's duration needs its successor, and finding successors means sorting every sample
# by GPU and time: on PostgreSQL that sort and its window cost several times a bare GROUP BY
# over the same rows. Agents sample on their node's interval grid, though, and a Prometheus
# import lands on its step. Where every sample of a GPU in a bucket and in both neighbouring
# buckets sits on the grid ``ts % interval == 0`` (an interval dividing 300 s; cap = 2 x
# interval), a sample's successor is either the next grid point (duration = interval) or at
# least two points later (duration = the cap). So one GROUP BY per (GPU, bucket) gives every
# sum at one interval per sample plus a bitmap of the occupied grid points; the bitmap names
# the samples whose next point is empty ("gap starters"), and those few are read back by key
# to add their second interval. Buckets off the grid (and MIG instances reporting
# gr_engine_active) go through the exact statement; both give the same numbers
# (tests/telemetry/test_rollup_grid.py compares them on random data).

# 300 / 5 = 60 grid points: a bucket's bitmap fits a signed 64-bit integer.
_GRID_MIN_INTERVAL = 5
# Set in a bucket's bitmap (on PostgreSQL) by a sample off its interval's grid.
_OFF_GRID_POS = 62
_OFF_GRID_BIT = 1 << _OFF_GRID_POS

# The grid pass counts in fields of one sum: a bucket holds at most 300 samples (one a
# second), so a count fits 9 bits, and one sample adds 1 to each field it counts in. Two
# sums stand for seven counts: every aggregate costs about a tenth of the pass, and these
# CASE expressions, compiled by the JIT, cost less (5M samples: 2.72 s against 2.94 s).
_COUNT_BITS = 9
# The fields of the two sums, lowest first: the sample, util_pct, sm_active and mem_used_mib
# present; power_w present, idle, idle holding memory.
_COUNTS_C1 = ("n", "n_util", "n_sm", "n_mem")
_COUNTS_C2 = ("n_pow", "n_idle", "n_held")


def _field(layout: tuple[str, ...], name: str) -> int:
    """What one sample adds to a packed count of ``layout`` to count in its field ``name``."""
    return 1 << (_COUNT_BITS * layout.index(name))


def _unpacked(packed: str, layout: tuple[str, ...]) -> str:
    """Select items reading the fields of the packed count ``packed`` by their names."""
    mask = (1 << _COUNT_BITS) - 1
    return ", ".join(
        f"({packed} >> {_COUNT_BITS * k}) & {mask} AS {name}" for k, name in enumerate(layout)
    )


_GRID_AGG_COLUMNS = (
    "gpu_id, b, step, n, ok, bits, n_act, s_act, n_idle, n_held, s_pow, util_mean, util_max, "
    "sm_mean, mem_mean, mem_max, pow_mean, n_prof, gs, land_new"
)
_GRID_TABLES = {
    "fw_isl0": "gpu_id bigint, tlo bigint, thi bigint",
    "fw_agg": (
        "gpu_id bigint, b bigint, step bigint, n bigint, ok integer, bits bigint, "
        "n_act bigint, s_act double precision, n_idle bigint, n_held bigint, "
        "s_pow double precision, util_mean double precision, util_max double precision, "
        "sm_mean double precision, mem_mean double precision, mem_max double precision, "
        "pow_mean double precision, n_prof bigint, gs bigint, land_new integer"
    ),
    "fw_bad": "gpu_id bigint, b bigint",
    "fw_gsk": (
        "gpu_id bigint, ts bigint, b_own bigint, b_land bigint, step bigint, land_new integer"
    ),
    "fw_gs": (
        "gpu_id bigint, b_own bigint, b_land bigint, step bigint, land_new integer, "
        "act double precision, mem double precision, power double precision"
    ),
    "fw_gsa": (
        "gpu_id bigint, b bigint, step bigint, n_act bigint, s_act double precision, "
        "n_idle bigint, n_held bigint, s_pow double precision, land_new integer"
    ),
}


def _grid_groups(cursor) -> tuple[dict[int, list[int]], set[int]]:
    """GPUs of the islands that can take the grid path, by interval (cap / 2); and which of
    them are MIG instances."""
    cursor.execute(
        "SELECT DISTINCT g.gpu_id, g.cap, g.mig FROM fw_gpu g JOIN fw_isl i USING (gpu_id)"
    )
    # SQLite sums the bits (see below); in an off-grid bucket up to ``step`` samples share
    # one, and at 5 s that sum could pass 2^63, which SQLite reports as an error.
    lowest = _GRID_MIN_INTERVAL if _pg() else 6
    groups: dict[int, list[int]] = defaultdict(list)
    mig: set[int] = set()
    for gpu_id, cap, is_mig in cursor.fetchall():
        step = int(cap) // 2
        if int(cap) == 2 * step and lowest <= step <= BUCKET_S // 2 and BUCKET_S % step == 0:
            groups[step].append(int(gpu_id))
            if is_mig:
                mig.add(int(gpu_id))
    return groups, mig


def _grid_wanted(cursor) -> bool:
    """Whether to try the grid path: by setting, or on "auto" for large work whose islands
    cover most of their common time range (the grid pass reads that whole range for every
    GPU it takes, so one GPU's day-long backfill beside the others' last bucket would read
    everyone's day; small work is cheap either way)."""
    mode = getattr(settings, "FLOPWATCH_ROLLUP_GRID_PATH", "auto")
    if mode != "auto":
        return mode == "always"
    cursor.execute("SELECT COUNT(DISTINCT gpu_id), SUM(thi - tlo), MIN(tlo), MAX(thi) FROM fw_isl")
    gpus, covered, lo, hi = cursor.fetchone()
    if not gpus or lo is None:
        return False
    return int(covered) >= 5000 * BUCKET_S and int(covered) >= 0.5 * (hi - lo) * gpus


def _grid_5m_insert(cursor, *, pad: int, gap: int) -> int:
    """Write the 5-minute rows of the islands' grid buckets and leave in ``fw_isl`` only
    islands of the rest (off-grid buckets, GPUs without a usable interval) for the exact
    statement. The caller has deleted the old rows of the islands. Returns rows written."""
    groups, mig = _grid_groups(cursor)
    if not groups:
        return 0
    pg = _pg()
    for name, columns in _GRID_TABLES.items():
        cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {name} ({columns})")
        cursor.execute(f"DELETE FROM {name}")
    cursor.execute("INSERT INTO fw_isl0 (gpu_id, tlo, thi) SELECT gpu_id, tlo, thi FROM fw_isl")
    fn = _sql_fns()
    least, greatest = fn["least"], fn["greatest"]
    # Every join below is of a few hundred thousand rows with a thousand or as many: hash
    # joins, each table read once. PostgreSQL's guesses for temporary tables otherwise lead
    # it to probe indexes or merge over sorts, seconds instead of tenths.
    _plan(cursor, nestloop=False, mergejoin=False)
    raw = _t(RawSample)
    thr = idle_threshold()

    cursor.execute("SELECT COUNT(*) FROM fleet_gpu")
    fleet_size = int(cursor.fetchone()[0])
    c1 = functools.partial(_field, _COUNTS_C1)
    c2 = functools.partial(_field, _COUNTS_C2)
    first = True
    for step, gpu_ids in sorted(groups.items()):
        ids = ", ".join(str(g) for g in gpu_ids)
        cursor.execute(f"SELECT MIN(tlo), MAX(thi) FROM fw_isl WHERE gpu_id IN ({ids})")
        lo, hi = cursor.fetchone()
        pos = f"(ts %% {BUCKET_S}) / {step}"
        n_gr = "COUNT(gr_engine_active)" if any(g in mig for g in gpu_ids) else "0"
        if pg:
            # An off-grid sample sets a bit of its own (a bucket has at most 60 points)
            # instead of feeding a MAX(ts % step): one aggregate less per sample, about
            # 0.1 s of 2.4 for 5M.
            pos = f"CASE WHEN ts %% {step} = 0 THEN {pos} ELSE {_OFF_GRID_POS} END"
            bits = f"BIT_OR(CAST(1 AS BIGINT) << CAST({pos} AS INTEGER))"
            off_column, off_grid, off_out = "", f"bits & {_OFF_GRID_BIT}", ""
        else:
            # SQLite has no BIT_OR: a SUM of distinct powers of two is the same number
            # (samples are unique per GPU and time; off-grid buckets, where two could share
            # a bit, are never read from the bitmap).
            bits = f"SUM(CAST(1 AS BIGINT) << CAST({pos} AS INTEGER))"
            off_column, off_grid, off_out = f"MAX(ts %% {step}) AS off, ", "off", ", off"
        in_group, group_params = _in_list("gpu_id", gpu_ids)
        if len(gpu_ids) == fleet_size:
            # Every GPU there is (a backlog, an import): no test of each sample's GPU
            # against the list (a tenth of the pass). Rows of a GPU registered since are
            # aggregated too and then left out by every join with the islands.
            in_group, group_params = "1 = 1", []
        scan = _seq_scan_better(cursor, lo=int(lo) - pad, hi=int(hi) + pad)
        if scan:
            # One pass over the range rather than an index probe per GPU and time (see the
            # exact statement); a time range inside a day partition still comes through
            # its block range index.
            _plan(cursor, indexscan=False)
        _jit(cursor, on=True)
        if pg and first:
            # CREATE TABLE AS may run in parallel on PostgreSQL (INSERT ... SELECT never
            # does, up to 15): the GROUP BY is split between the worker processes.
            cursor.execute("DROP TABLE fw_agg")
            into = f"CREATE TEMP TABLE fw_agg ({_GRID_AGG_COLUMNS}) AS"
        else:
            into = f"INSERT INTO fw_agg ({_GRID_AGG_COLUMNS})"
        first = False
        # Per (GPU, bucket): sums at one interval per sample, the bitmap, and whether the
        # bucket is clean: every sample on the grid, and sm_active in all of its samples or
        # in none (on a MIG instance, no gr_engine_active either, which would come before
        # sm_active in the activity). In a clean bucket the activity sums are then the
        # sm_active sums or the util_pct ones, so only the idle test reads a per-sample
        # activity: each aggregate here is about a tenth of the pass (10M samples), and the
        # sums stand in for three of them. gr_engine_active is counted only where a MIG
        # instance could use it.
        group_mig = [g for g in gpu_ids if g in mig]
        mig_clean, mig_params = "1 = 1", []
        if group_mig:
            is_mig, mig_params = _in_list("gpu_id", group_mig)
            mig_clean = f"(n_gr = 0 OR NOT ({is_mig}))"
        # And each bucket's gap starters (see below) from its bitmap and the next bucket's:
        # the next row of the GPU in this order, if it is the next bucket.
        grid_bits = f"(bits & {_OFF_GRID_BIT - 1})"
        follows = f"LEAD(b) OVER w = b + {BUCKET_S}"
        cursor.execute(
            f"""
            {into}
            SELECT gpu_id, b, {step}, n,
                   CASE WHEN {off_grid} = 0 AND (n_sm = 0 OR n_sm = n) AND {mig_clean} THEN 1
                        ELSE 0 END,
                   {grid_bits}, CASE WHEN n_sm > 0 THEN n_sm ELSE n_util END,
                   CASE WHEN n_sm > 0 THEN s_sm ELSE s_util / 100.0 END,
                   n_idle, n_held, s_pow,
                   s_util / NULLIF(n_util, 0), util_max, s_sm / NULLIF(n_sm, 0),
                   s_mem / NULLIF(n_mem, 0), mem_max, s_pow / NULLIF(n_pow, 0), n_sm,
                   {grid_bits} & ~(({grid_bits} >> 1)
                                   | ((CASE WHEN {follows}
                                            THEN LEAD({grid_bits}) OVER w & 1 ELSE 0 END)
                                      << {BUCKET_S // step - 1})),
                   CASE WHEN {follows} THEN 0 ELSE 1 END
            FROM (
                SELECT gpu_id, b, n_gr, bits, s_util, util_max, s_sm, s_mem, mem_max, s_pow,
                       {_unpacked("c1", _COUNTS_C1)}, {_unpacked("c2", _COUNTS_C2)}{off_out}
                FROM (
                    SELECT gpu_id, (ts / {BUCKET_S}) * {BUCKET_S} AS b,
                           {off_column}{n_gr} AS n_gr, {bits} AS bits,
                           -- Seven counts in two sums of {_COUNT_BITS}-bit fields (see
                           -- _COUNTS_C1 and _COUNTS_C2).
                           SUM({c1("n")}
                               + CASE WHEN util_pct IS NULL THEN 0 ELSE {c1("n_util")} END
                               + CASE WHEN sm_active IS NULL THEN 0 ELSE {c1("n_sm")} END
                               + CASE WHEN mem_used_mib IS NULL THEN 0 ELSE {c1("n_mem")} END)
                           AS c1,
                           SUM(CASE WHEN power_w IS NULL THEN 0 ELSE {c2("n_pow")} END
                               + CASE WHEN COALESCE(sm_active, util_pct / 100.0) < %s
                                      THEN CASE WHEN mem_used_mib > %s
                                                THEN {c2("n_idle") + c2("n_held")}
                                                ELSE {c2("n_idle")} END
                                      ELSE 0 END) AS c2,
                           SUM(util_pct) AS s_util, MAX(util_pct) AS util_max,
                           SUM(sm_active) AS s_sm, SUM(mem_used_mib) AS s_mem,
                           MAX(mem_used_mib) AS mem_max, SUM(power_w) AS s_pow
                    FROM {raw}
                    WHERE ts >= {int(lo) - pad} AND ts < {int(hi) + pad} AND {in_group}
                    GROUP BY gpu_id, ts / {BUCKET_S}
                ) p
            ) r
            WINDOW w AS (PARTITION BY gpu_id ORDER BY b)
            -- Sorted once here, in the 5-minute table's key order, for the window and for
            -- the insert below, which then writes its pages one after another.
            ORDER BY gpu_id, b
            """,
            [*mig_params, thr, MEM_HELD_MIB, *group_params],
        )
        if scan:
            _plan(cursor, indexscan=True)
        _jit(cursor, on=False)
    # No ANALYZE of fw_agg (0.2 s for 334,000 rows): the joins over it are hash joins by the
    # plan settings above, and PostgreSQL sizes a table without statistics from its pages.
    #
    # A bucket takes the grid path when it and both neighbours are clean (no samples is
    # clean). The buckets that are not clean are listed apart: usually none (a backlog on
    # the grid), and then no bucket needs to look at its neighbours at all.
    cursor.execute("INSERT INTO fw_bad (gpu_id, b) SELECT gpu_id, b FROM fw_agg WHERE ok = 0")
    any_bad = _rows_inserted(cursor) > 0

    def clean(alias: str, b: str) -> str:
        if not any_bad:
            return "1 = 1"
        return f"NOT EXISTS (SELECT 1 FROM fw_bad d WHERE d.gpu_id = {alias}.gpu_id AND d.b = {b})"

    # "ok <> 0" rather than "ok = 1": without statistics PostgreSQL takes an equality to
    # keep 0.5 % of the rows, and then hashes the aggregate's rows to probe them with the
    # gap starters' instead of the other way round.
    fast = f"a.ok <> 0 AND {clean('a', f'a.b - {BUCKET_S}')} AND {clean('a', f'a.b + {BUCKET_S}')}"
    inside = "JOIN fw_isl0 o ON o.gpu_id = {a}.gpu_id AND {b} >= o.tlo AND {b} < o.thi"
    # The rest, as islands cut to the original ones, replaces the grid GPUs' islands for
    # the exact statement: buckets with samples that do not take the grid path, and the
    # empty bucket after one (its last sample's time may reach it) unless that one is
    # clean and so is the bucket after.
    cursor.execute("DELETE FROM fw_src")
    cursor.execute("DELETE FROM fw_pisl")
    if any_bad:
        cursor.execute(
            f"""
            INSERT INTO fw_src (gpu_id, bucket)
            SELECT a.gpu_id, a.b FROM fw_agg a {inside.format(a="a", b="a.b")}
            WHERE NOT ({fast})
            UNION ALL
            SELECT a.gpu_id, a.b + {BUCKET_S} FROM fw_agg a
            {inside.format(a="a", b=f"a.b + {BUCKET_S}")}
            WHERE NOT EXISTS (SELECT 1 FROM fw_agg e WHERE e.gpu_id = a.gpu_id
                              AND e.b = a.b + {BUCKET_S})
              AND NOT (a.ok = 1 AND {clean("a", f"a.b + {2 * BUCKET_S}")})
            """,
            [],
        )
        _islands_build(cursor, src="fw_src", dst="fw_pisl", pad=0, gap=gap)
    grid_ids = ", ".join(str(g) for ids in groups.values() for g in ids)
    cursor.execute(f"DELETE FROM fw_isl WHERE gpu_id IN ({grid_ids})")
    cursor.execute(
        f"""
        INSERT INTO fw_isl (gpu_id, tlo, thi)
        SELECT s.gpu_id, {greatest}(s.tlo, o.tlo), {least}(s.thi, o.thi)
        FROM fw_pisl s JOIN fw_isl0 o ON o.gpu_id = s.gpu_id AND s.tlo < o.thi AND s.thi > o.tlo
        """
    )
    # Whether any of the grid GPUs' buckets are left to the exact statement (usually none).
    any_exact = _rows_inserted(cursor) > 0
    _analyze(cursor, "fw_isl")
    # Gap starters: occupied points whose next point (the next bucket's first for the last
    # one) is empty, read from the bitmap of clean buckets followed by a clean one.
    cursor.execute("DELETE FROM fw_num")
    cursor.executemany(
        "INSERT INTO fw_num (n) VALUES (%s)", [(n,) for n in range(BUCKET_S // _GRID_MIN_INTERVAL)]
    )
    # Each bucket's set bits are peeled off lowest first (x & -x is the lowest, x & (x - 1)
    # the rest), so a bucket costs one row per gap starter rather than a test of each of its
    # grid points (104,000 buckets with a gap starter: 0.7 s -> 0.2 s). The last point's
    # successor is the next bucket's first, read by the grid pass's window (a window here,
    # over fw_agg again, cost 0.25-0.37 s per part with this statement).
    cursor.execute(
        f"""
        WITH RECURSIVE r (gpu_id, b, step, gs, land_new) AS (
            SELECT gpu_id, b, step, gs, land_new FROM fw_agg a
            WHERE a.gs <> 0 AND a.ok <> 0 AND {clean("a", f"a.b + {BUCKET_S}")}
            UNION ALL
            SELECT gpu_id, b, step, gs & (gs - 1), land_new FROM r WHERE gs & (gs - 1) <> 0
        )
        INSERT INTO fw_gsk (gpu_id, ts, b_own, b_land, step, land_new)
        SELECT r.gpu_id, r.b + r.step * n.n, r.b,
               (r.b + r.step * (n.n + 1)) - (r.b + r.step * (n.n + 1)) %% {BUCKET_S}, r.step,
               CASE WHEN r.step * (n.n + 1) = {BUCKET_S} THEN r.land_new ELSE 0 END
        FROM r JOIN fw_num n ON CAST(1 AS BIGINT) << CAST(n.n AS INTEGER) = r.gs & -r.gs
        ORDER BY 2, 1  -- time, then GPU: the order of the probes below
        """,
        [],
    )
    cursor.execute("SELECT MIN(ts), MAX(ts) FROM fw_gsk")
    lo, hi = cursor.fetchone()
    if lo is not None:
        # A probe by key per gap starter (they are few), in time order like the raw heap
        # (stored as samples arrive), so neighbouring probes share pages; no Memoize, which
        # would cache every key once and never hit (0.8-1.0 s -> 0.6 s for 104,000). The
        # plan is named rather than left to statistics of fw_gsk (an ANALYZE of 52,000 gap
        # starters: 25-37 ms), and the gap starters come first by construction (a LATERAL
        # subquery on PostgreSQL, a CROSS JOIN on SQLite): the newest samples lie past the
        # raw statistics, where PostgreSQL expects one row in the time range and would read
        # the range once, testing every gap starter against each of its samples (a tick of
        # 10,000 GPUs: 20,000 x 270,000 pairs, minutes).
        _plan(cursor, nestloop=True, hashjoin=False, memoize=False)
        in_range = f"x.ts >= {int(lo)} AND x.ts <= {int(hi)}"
        probe = (
            f"CROSS JOIN LATERAL (SELECT x.sm_active, x.util_pct, x.mem_used_mib, x.power_w "
            f"FROM {raw} x WHERE x.gpu_id = k.gpu_id AND x.ts = k.ts AND {in_range} "
            # OFFSET 0 keeps the subquery apart: pulled up into a plain join, it could be
            # joined the other way round again.
            f"OFFSET 0) x"
            if pg
            else f"CROSS JOIN {raw} x WHERE x.gpu_id = k.gpu_id AND x.ts = k.ts AND {in_range}"
        )
        cursor.execute(
            f"""
            INSERT INTO fw_gs (gpu_id, b_own, b_land, step, land_new, act, mem, power)
            SELECT k.gpu_id, k.b_own, k.b_land, k.step, k.land_new,
                   COALESCE(x.sm_active, x.util_pct / 100.0), x.mem_used_mib, x.power_w
            FROM fw_gsk k {probe}
            """
        )
        _plan(cursor, nestloop=False, hashjoin=True, memoize=True)
    # Gap starters' second interval per bucket: activity where it lands, energy in the
    # sample's own bucket (as in the exact statement, the whole duration there).
    cursor.execute(
        """
        INSERT INTO fw_gsa (gpu_id, b, step, n_act, s_act, n_idle, n_held, s_pow, land_new)
        SELECT gpu_id, b, MAX(step), COUNT(act), SUM(act),
               SUM(CASE WHEN act < %s THEN 1 ELSE 0 END),
               SUM(CASE WHEN act < %s AND mem > %s THEN 1 ELSE 0 END), SUM(power),
               MAX(land_new)
        FROM (
            SELECT gpu_id, b_land AS b, step, act, mem, NULL AS power, land_new FROM fw_gs
            UNION ALL
            SELECT gpu_id, b_own, step, NULL, NULL, power, 0 FROM fw_gs
        ) g
        GROUP BY gpu_id, b
        """,
        [thr, thr, MEM_HELD_MIB],
    )
    # Allocated seconds without joining every row to every span of its GPU and summing: the
    # spans of a GPU are disjoint, so a bucket lies wholly inside at most one of them, and
    # one only partly covered is the first or last bucket of each span that touches it (a
    # few per span, summed apart).
    allocated = f"""
        LEFT JOIN fw_span wh ON wh.gpu_id = f.gpu_id AND wh.s <= f.b AND wh.e >= f.b + {BUCKET_S}
        LEFT JOIN (
            SELECT gpu_id, b, SUM({least}(e, b + {BUCKET_S}) - {greatest}(s, b)) AS secs
            FROM (
                SELECT gpu_id, s, e, s - s %% {BUCKET_S} AS b FROM fw_span
                UNION
                SELECT gpu_id, s, e, (e - 1) - (e - 1) %% {BUCKET_S} FROM fw_span
            ) x
            WHERE NOT (s <= b AND e >= b + {BUCKET_S})
            GROUP BY gpu_id, b
        ) pa ON pa.gpu_id = f.gpu_id AND pa.b = f.b
    """
    columns = """(gpu_id, bucket, samples, covered_s, missing_s, allocated_s, busy_s, idle_s,
        mem_held_idle_s, util_mean, util_max, sm_active_mean, mem_used_mean_mib,
        mem_used_max_mib, power_mean_w, energy_j, activity_source)"""
    row = f"""
        SELECT f.gpu_id, f.b, f.n, f.cov, {BUCKET_S} - f.cov,
               CASE WHEN wh.gpu_id IS NOT NULL THEN {BUCKET_S} ELSE COALESCE(pa.secs, 0) END,
               f.busy, f.idle, f.held, f.util_mean, f.util_max, f.sm_mean, f.mem_mean,
               f.mem_max, f.pow_mean, f.energy,
               CASE WHEN f.n_prof > 0 THEN 'sm_active' WHEN f.n_src > 0 THEN 'util'
                    ELSE '' END
    """
    outside_exact = """NOT EXISTS (SELECT 1 FROM fw_isl i WHERE i.gpu_id = {a}.gpu_id
                       AND {b} >= i.tlo AND {b} < i.thi)"""
    if not any_exact:
        # fw_isl holds only other GPUs' islands, which no row here falls in.
        outside_exact = "1 = 1"
    table = _t(GpuRollup5m)
    # Every bucket with samples that takes the grid path: its own sums plus its gap
    # starters'. A clean bucket has sm_active in all of its samples or in none, so its
    # activity comes from one source. In the primary key's order: its pages are filled one
    # after another rather than visited at random (a third less time for 334,000 rows). That
    # is fw_agg's order, and a hash join in one batch (its hashed side, the small tables,
    # fits work_mem) keeps the order of its outer side, fw_agg: no ORDER BY, whose sort of
    # rows already in order took 0.05-0.08 s per 167,000. (Out of order, the same rows would
    # only be written more slowly.)
    cursor.execute(
        f"""
        INSERT INTO {table} {columns}
        {row}
        FROM (
            SELECT a.gpu_id, a.b, a.n,
                   CAST(a.step * (a.n_act + COALESCE(x.n_act, 0)) AS DOUBLE PRECISION) AS cov,
                   a.step * (COALESCE(a.s_act, 0) + COALESCE(x.s_act, 0)) AS busy,
                   CAST(a.step * (a.n_idle + COALESCE(x.n_idle, 0)) AS DOUBLE PRECISION)
                   AS idle,
                   CAST(a.step * (a.n_held + COALESCE(x.n_held, 0)) AS DOUBLE PRECISION)
                   AS held,
                   a.util_mean, a.util_max, a.sm_mean, a.mem_mean, a.mem_max, a.pow_mean,
                   a.step * (a.s_pow + COALESCE(x.s_pow, 0)) AS energy,
                   -- A clean bucket's samples with activity are those of its one source.
                   a.n_prof, a.n_act AS n_src
            FROM fw_agg a
            {inside.format(a="a", b="a.b")}
            LEFT JOIN fw_gsa x ON x.gpu_id = a.gpu_id AND x.b = a.b
            WHERE {fast} AND {outside_exact.format(a="a", b="a.b")}
        ) f
        {allocated}
        """,
        [],
    )
    rows = _rows_inserted(cursor)
    # And the empty bucket after one whose last sample's second interval lands in it (that
    # one is clean, and so must the bucket after the empty one be).
    cursor.execute(
        f"""
        INSERT INTO {table} {columns}
        {row}
        FROM (
            SELECT x.gpu_id, x.b, 0 AS n, CAST(x.step * x.n_act AS DOUBLE PRECISION) AS cov,
                   x.step * x.s_act AS busy, CAST(x.step * x.n_idle AS DOUBLE PRECISION) AS idle,
                   CAST(x.step * x.n_held AS DOUBLE PRECISION) AS held,
                   CAST(NULL AS DOUBLE PRECISION) AS util_mean,
                   CAST(NULL AS DOUBLE PRECISION) AS util_max,
                   CAST(NULL AS DOUBLE PRECISION) AS sm_mean,
                   CAST(NULL AS DOUBLE PRECISION) AS mem_mean,
                   CAST(NULL AS DOUBLE PRECISION) AS mem_max,
                   CAST(NULL AS DOUBLE PRECISION) AS pow_mean,
                   CAST(NULL AS DOUBLE PRECISION) AS energy, 0 AS n_prof, 0 AS n_src
            FROM fw_gsa x
            {inside.format(a="x", b="x.b")}
            WHERE x.land_new = 1 AND {clean("x", f"x.b + {BUCKET_S}")}
              AND {outside_exact.format(a="x", b="x.b")}
        ) f
        {allocated}
        """,
        [],
    )
    rows += _rows_inserted(cursor)
    _plan(cursor, nestloop=True, mergejoin=True)
    return rows


def _gpu_5m_recompute(cursor, *, pad: int) -> tuple[int, int]:
    """Replace every ``GpuRollup5m`` row inside the islands with one computed from raw:
    grid buckets by the grid path when it is wanted, the rest by the exact statement.
    Returns (rows written, of them by the grid path)."""
    table = _t(GpuRollup5m)
    if _pg():
        # Island by island along the key. PostgreSQL would otherwise hash the islands and
        # read the whole table, every 5-minute row kept (180 days), on every tick: 2.6 s a
        # tick with 41 days of 1,000 GPUs kept, nothing measurable so. No sequential scan
        # either: with few GPUs it guesses that an island holds a large share of the table.
        _plan(cursor, hashjoin=False, mergejoin=False, seqscan=False)
        cursor.execute(
            f"""DELETE FROM {table} r USING fw_isl i
                WHERE r.gpu_id = i.gpu_id AND r.bucket >= i.tlo AND r.bucket < i.thi"""
        )
        _plan(cursor, hashjoin=True, mergejoin=True, seqscan=True)
    else:
        # SQLite has no DELETE ... USING. The keys to delete are listed island by island
        # (a CROSS JOIN is joined in the order written), not by a pass over the table
        # probing the islands, as SQLite does for an EXISTS.
        cursor.execute(
            f"""DELETE FROM {table} WHERE (gpu_id, bucket) IN (
                  SELECT r.gpu_id, r.bucket FROM fw_isl i CROSS JOIN {table} r
                  WHERE r.gpu_id = i.gpu_id AND r.bucket >= i.tlo AND r.bucket < i.thi)"""
        )
    grid_rows = 0
    if _grid_wanted(cursor):
        grid_rows = _grid_5m_insert(cursor, pad=pad, gap=BUCKET_S + 4 * pad)
    return grid_rows + _exact_5m_insert(cursor, pad=pad), grid_rows


def _exact_5m_insert(cursor, *, pad: int) -> int:
    """Write the 5-minute rows of every bucket of the islands in ``fw_isl``.

    One pass over the samples: LEAD gives each sample its duration; the part inside its own
    bucket is aggregated per (GPU, bucket) together with the part spilling past the bucket's
    end (only the last sample of a bucket can spill); the spill is then spread over the
    following buckets at the aggregated level (a few hundred thousand rows, not millions).
    """
    table = _t(GpuRollup5m)
    fn = _sql_fns()
    least, greatest, fence = fn["least"], fn["greatest"], fn["fence"]
    cursor.execute("SELECT COALESCE(MAX(thi - tlo), 0) FROM fw_isl")
    nums = int(cursor.fetchone()[0]) // BUCKET_S + 1
    cursor.execute("DELETE FROM fw_num")
    cursor.executemany("INSERT INTO fw_num (n) VALUES (%s)", [(n,) for n in range(nums)])
    _analyze(cursor, "fw_num")
    thr = idle_threshold()
    raw = _t(RawSample)
    # Constant bounds let PostgreSQL skip the day partitions outside the work at plan time.
    cursor.execute("SELECT MIN(tlo), MAX(thi) FROM fw_isl")
    lo, hi = cursor.fetchone()
    if lo is None:
        return 0
    scan = _seq_scan_better(cursor, lo=int(lo) - pad, hi=int(hi) + pad)
    if scan:
        # Most rows of the partitions are wanted (a backlog, an import): one sequential
        # pass beats an index probe per row, which is a random heap read in a table stored
        # in arrival order.
        _plan(cursor, indexscan=False, bitmapscan=False)
        # Hash the buckets rather than sort the samples a second time (the estimate of
        # groups is far off for temporary tables).
        _plan(cursor, sort=False)
    # LEAD over one int8 key (GPU, then time) instead of PARTITION BY gpu ORDER BY ts: the
    # sort compares a single integer rather than breaking ties on the GPU column for every
    # pair (2M samples: 7.4 s -> 4.7 s for the whole statement). Across a GPU change the
    # difference is >= 2^33 and the cap applies, as with no successor. Islands are not a
    # partition any more: read ranges of one GPU's islands are more than ``pad`` apart, so a
    # sample that can reach an island's bucket finds its successor in its own range or is
    # capped either way.
    key = f"(x.gpu_id * {_GPU_KEY_STRIDE} + x.ts)"
    # The 200-odd island rows meet their GPU's cap and MIG flag before the samples do: one
    # hash probe per sample instead of two.

    cursor.execute(
        f"""
        WITH w AS (
            SELECT x.gpu_id, g.cap, g.mig, x.ts, x.util_pct, x.sm_active,
                   x.gr_engine_active, x.mem_used_mib, x.power_w,
                   LEAD({key}) OVER (ORDER BY {key}) - {key} AS nd
            FROM (SELECT i.gpu_id, i.tlo, i.thi, g.cap, g.mig
                  FROM fw_isl i JOIN fw_gpu g ON g.gpu_id = i.gpu_id {fence}) g
            JOIN {raw} x ON x.gpu_id = g.gpu_id AND x.ts >= g.tlo - %s AND x.ts < g.thi + %s
            WHERE x.ts >= {int(lo) - pad} AND x.ts < {int(hi) + pad}
        ),
        d AS (
            SELECT gpu_id, ts, ts - ts %% {BUCKET_S} AS b0,
                   CASE WHEN nd <= cap THEN nd ELSE cap END AS d,
                   CASE WHEN mig = 1
                        THEN COALESCE(gr_engine_active, sm_active, util_pct / 100.0)
                        ELSE COALESCE(sm_active, util_pct / 100.0) END AS act,
                   CASE WHEN mig = 1 AND (gr_engine_active IS NOT NULL
                                          OR sm_active IS NOT NULL) THEN 1
                        WHEN mig = 0 AND sm_active IS NOT NULL THEN 1
                        WHEN util_pct IS NOT NULL THEN 0 END AS prof,
                   util_pct,
                   CASE WHEN mig = 1 THEN COALESCE(gr_engine_active, sm_active)
                        ELSE sm_active END AS sm,
                   mem_used_mib AS mem, power_w AS power
            FROM w {fence}
        ),
        s AS (
            -- Seconds as floats: SUM over bigint is numeric on PostgreSQL, several times
            -- slower, and the sums are whole seconds far below 2^53 anyway.
            SELECT gpu_id, b0, d, act, prof, util_pct, sm, mem, power,
                   CAST(CASE WHEN act IS NULL THEN 0
                        ELSE {least}(d, b0 + {BUCKET_S} - ts) END AS DOUBLE PRECISION) AS own,
                   CAST(CASE WHEN act IS NULL THEN 0
                        ELSE {greatest}(ts + d - b0 - {BUCKET_S}, 0) END AS DOUBLE PRECISION)
                   AS sp,
                   CASE WHEN act < %s THEN 1 ELSE 0 END
                   * CASE WHEN mem > %s THEN 2 ELSE 1 END AS idle_kind
            FROM d {fence}
        ),
        a AS (
            SELECT gpu_id, b0, COUNT(*) AS n,
                   SUM(own) AS cov, SUM(act * own) AS busy,
                   SUM(CASE WHEN idle_kind > 0 THEN own ELSE 0 END) AS idle,
                   SUM(CASE WHEN idle_kind = 2 THEN own ELSE 0 END) AS held,
                   {_mean("util_pct")} AS util_mean, MAX(util_pct) AS util_max,
                   {_mean("sm")} AS sm_mean, {_mean("mem")} AS mem_mean, MAX(mem) AS mem_max,
                   {_mean("power")} AS pow_mean,
                   SUM(power * d) AS energy, SUM(prof) AS n_prof, COUNT(prof) AS n_src,
                   MAX(sp) AS sp, SUM(act * sp) AS sp_busy,
                   SUM(CASE WHEN idle_kind > 0 THEN sp ELSE 0 END) AS sp_idle,
                   SUM(CASE WHEN idle_kind = 2 THEN sp ELSE 0 END) AS sp_held
            FROM s
            GROUP BY gpu_id, b0
        ),
        u AS (
            SELECT gpu_id, b0 AS b, n, cov, busy, idle, held, util_mean, util_max,
                   sm_mean, mem_mean, mem_max, pow_mean, energy, n_prof, n_src
            FROM a
            UNION ALL
            SELECT gpu_id, b, 0, piece,
                   CASE WHEN piece = sp THEN sp_busy ELSE sp_busy * piece / sp END,
                   CASE WHEN piece = sp THEN sp_idle ELSE sp_idle * piece / sp END,
                   CASE WHEN piece = sp THEN sp_held ELSE sp_held * piece / sp END,
                   NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 0
            FROM (
                SELECT a.gpu_id, a.b0 + {BUCKET_S} * o.j AS b, a.sp, a.sp_busy,
                       a.sp_idle, a.sp_held,
                       {least}(a.sp - {BUCKET_S} * (o.j - 1), {BUCKET_S}) AS piece
                FROM a JOIN fw_off o ON o.j >= 1 AND a.sp > {BUCKET_S} * (o.j - 1)
            ) q
        ),
        alloc AS (
            SELECT c.gpu_id, c.b,
                   SUM({least}(c.e, c.b + {BUCKET_S}) - {greatest}(c.s, c.b)) AS secs
            FROM (
                SELECT m.gpu_id, m.s, m.e,
                       ({greatest}(m.s, i.tlo) - {greatest}(m.s, i.tlo) %% {BUCKET_S})
                       + {BUCKET_S} * n.n AS b
                FROM fw_span m
                JOIN fw_isl i ON i.gpu_id = m.gpu_id AND m.s < i.thi AND m.e > i.tlo
                JOIN fw_num n
                  ON ({greatest}(m.s, i.tlo) - {greatest}(m.s, i.tlo) %% {BUCKET_S})
                     + {BUCKET_S} * n.n < {least}(m.e, i.thi)
            ) c
            GROUP BY c.gpu_id, c.b
        )
        INSERT INTO {table} (gpu_id, bucket, samples, covered_s, missing_s, allocated_s,
            busy_s, idle_s, mem_held_idle_s, util_mean, util_max, sm_active_mean,
            mem_used_mean_mib, mem_used_max_mib, power_mean_w, energy_j, activity_source)
        SELECT f.gpu_id, f.b, f.n, f.cov, {BUCKET_S} - f.cov, COALESCE(al.secs, 0),
               -- A bucket whose samples carry no activity at all has no busy sum.
               COALESCE(f.busy, 0), f.idle, f.held, f.util_mean, f.util_max, f.sm_mean, f.mem_mean,
               f.mem_max, f.pow_mean, f.energy,
               CASE WHEN f.n_prof > 0 AND f.n_src > f.n_prof THEN 'mixed'
                    WHEN f.n_prof > 0 THEN 'sm_active'
                    WHEN f.n_src > 0 THEN 'util' ELSE '' END
        FROM (
            SELECT gpu_id, b, SUM(n) AS n, SUM(cov) AS cov, SUM(busy) AS busy,
                   SUM(idle) AS idle, SUM(held) AS held, MAX(util_mean) AS util_mean,
                   MAX(util_max) AS util_max, MAX(sm_mean) AS sm_mean,
                   MAX(mem_mean) AS mem_mean, MAX(mem_max) AS mem_max,
                   MAX(pow_mean) AS pow_mean, MAX(energy) AS energy,
                   SUM(n_prof) AS n_prof, SUM(n_src) AS n_src
            FROM u
            GROUP BY gpu_id, b
        ) f
        JOIN fw_isl i ON i.gpu_id = f.gpu_id AND f.b >= i.tlo AND f.b < i.thi
        LEFT JOIN alloc al ON al.gpu_id = f.gpu_id AND al.b = f.b
        ORDER BY f.gpu_id, f.b
        """,
        [pad, pad, thr, MEM_HELD_MIB],
    )
    rows = _rows_inserted(cursor)
    if scan:
        _plan(cursor, indexscan=True, bitmapscan=True, sort=True)
    return rows


def _seq_scan_better(cursor, *, lo: int, hi: int) -> bool:
    """Whether the islands left to compute want a large share of the raw rows in [lo, hi)
    (PostgreSQL only; estimated from the islands' seconds at the shortest interval and the
    partitions' row counts). After the grid path has taken most buckets, the few left for
    the exact statement are probed by key rather than read by a pass over everything."""
    if not _pg():
        return False
    from apps.telemetry.storage import partition_name

    cursor.execute(
        "SELECT SUM(i.thi - i.tlo), MIN(g.cap) FROM fw_isl i JOIN fw_gpu g USING (gpu_id)"
    )
    seconds, cap = cursor.fetchone()
    if not seconds:
        return False
    wanted = int(seconds) / max(1, (cap or 20) // 2)
    days = range(lo - lo % DAY_S, hi, DAY_S)
    cursor.execute(
        "SELECT COALESCE(SUM(GREATEST(reltuples, 0)), 0) FROM pg_class WHERE relname = ANY(%s)",
        [[partition_name(day) for day in days]],
    )
    stored = float(cursor.fetchone()[0])
    return stored > 0 and wanted > 0.2 * stored


def _hourly_recompute(cursor, *, pad: int, gap: int, hours: list[int]) -> int:
    """Replace every ``AllocationGpuHourly`` row of the (GPU, hour) pairs in ``fw_hour``
    (``hours``: its distinct hours, ``_hours_listed``).

    Buckets wholly inside an allocation take the GPU's 5-minute row as it is; the (at most
    two) buckets an allocation starts or ends inside are cut to the second from raw pieces.
    """
    table = _t(AllocationGpuHourly)
    r5 = _t(GpuRollup5m)
    # The hours as a list of values, through the hour index: PostgreSQL would otherwise hash
    # fw_hour and read every hourly row kept (the table grows by a fleet's worth an hour).
    in_hours, hour_params = _in_list("hour", hours)
    _plan(cursor, seqscan=False)
    cursor.execute(
        f"""DELETE FROM {table} WHERE {in_hours} AND EXISTS (
              SELECT 1 FROM fw_hour h WHERE h.gpu_id = {table}.gpu_id
              AND h.hour = {table}.hour)""",
        hour_params,
    )
    _plan(cursor, seqscan=True)
    # Boundary buckets of allocations inside the hours to recompute.
    cursor.execute("DELETE FROM fw_src")
    cursor.execute("DELETE FROM fw_pisl")
    cursor.execute(
        f"""
        INSERT INTO fw_src (gpu_id, bucket)
        SELECT a.gpu_id, a.s - a.s %% {BUCKET_S} FROM fw_alloc a
        JOIN fw_hour h ON h.gpu_id = a.gpu_id AND h.hour = a.s - a.s %% {HOUR_S}
        WHERE a.s %% {BUCKET_S} <> 0
        UNION
        SELECT a.gpu_id, a.e - a.e %% {BUCKET_S} FROM fw_alloc a
        JOIN fw_hour h ON h.gpu_id = a.gpu_id AND h.hour = a.e - a.e %% {HOUR_S}
        WHERE a.e %% {BUCKET_S} <> 0
        """,
        [],
    )
    _islands_build(cursor, src="fw_src", dst="fw_pisl", pad=0, gap=gap)
    _analyze(cursor, "fw_src", "fw_pisl")
    thr = idle_threshold()
    # The boundary buckets' pieces per allocation and hour first, on their own: each island
    # is a few minutes of one GPU, read by key. In one statement with the rest PostgreSQL
    # cannot tell how few rows an island's time range selects and may hash-join the whole
    # raw table instead (2.4 s for a per-minute tick of 500 open jobs, against 0.05 s).
    cursor.execute("DELETE FROM fw_q")
    _plan(cursor, hashjoin=False, mergejoin=False)
    cursor.execute(
        f"""
        INSERT INTO fw_q (allocation_id, gpu_id, hour, cov, busy, idle, held)
        SELECT a.allocation_id, pc.gpu_id, pc.b - pc.b %% {HOUR_S},
               SUM(CASE WHEN pc.act IS NOT NULL THEN ov.sec ELSE 0 END),
               SUM(CASE WHEN pc.act IS NOT NULL THEN pc.act * ov.sec ELSE 0 END),
               SUM(CASE WHEN pc.act < %s THEN ov.sec ELSE 0 END),
               SUM(CASE WHEN pc.act < %s AND pc.mem > %s THEN ov.sec ELSE 0 END)
        FROM ({_pieces_sql(islands="fw_pisl", pad=pad)}) pc
        JOIN fw_alloc a ON a.gpu_id = pc.gpu_id AND a.s < pc.hi AND a.e > pc.lo
             AND (a.s > pc.b OR a.e < pc.b + {BUCKET_S})
        GROUP BY a.allocation_id, pc.gpu_id, pc.b - pc.b %% {HOUR_S}
        """.replace("ov.sec", _OVERLAP),
        [thr, thr, MEM_HELD_MIB],
    )
    _analyze(cursor, "fw_q")
    # The sums of the buckets wholly inside each allocation, read along the 5-minute
    # table's key: one range per run of consecutive hours of a GPU and allocation (nested
    # loops and index scans only). As a hash join PostgreSQL reads every 5-minute row kept,
    # 2.5 s per tick for 41 days of 1,000 GPUs; hour by hour, a range per hour, it costs a
    # full rollup of 10M samples 0.05-0.1 s more than this.
    cursor.execute("DELETE FROM fw_hisl")
    cursor.execute(
        f"""
        INSERT INTO fw_hisl (gpu_id, lo, hi)
        SELECT gpu_id, MIN(hour), MAX(hour) + {HOUR_S}
        FROM (
            SELECT gpu_id, hour,
                   hour - {HOUR_S} * ROW_NUMBER() OVER (PARTITION BY gpu_id ORDER BY hour) AS run
            FROM (SELECT DISTINCT gpu_id, hour FROM fw_hour) d
        ) x
        GROUP BY gpu_id, run
        """
    )
    _analyze(cursor, "fw_hisl")
    cursor.execute("DELETE FROM fw_whole")
    _plan(cursor, hashjoin=False, mergejoin=False, seqscan=False)
    cursor.execute(
        f"""
        INSERT INTO fw_whole (allocation_id, gpu_id, hour, cov, busy, idle, held)
        SELECT a.allocation_id, a.gpu_id, r.bucket - r.bucket %% {HOUR_S}, SUM(r.covered_s),
               SUM(r.busy_s), SUM(r.idle_s), SUM(r.mem_held_idle_s)
        FROM fw_hisl i
        -- CROSS JOINs are joined in the order written on SQLite: the runs, their
        -- allocations, then the key range of each pair.
        CROSS JOIN fw_alloc a
        CROSS JOIN {r5} r
        WHERE a.gpu_id = i.gpu_id AND a.s < i.hi AND a.e > i.lo
          AND r.gpu_id = i.gpu_id AND r.bucket >= i.lo AND r.bucket < i.hi
          AND r.bucket >= a.s AND r.bucket <= a.e - {BUCKET_S}
        GROUP BY a.allocation_id, a.gpu_id, r.bucket - r.bucket %% {HOUR_S}
        """,
        [],
    )
    _plan(cursor, seqscan=True)
    # Hash joins and hash aggregation (merge joins and sorts stay off): PostgreSQL,
    # misjudging the temporary tables, would sort a few hundred thousand 5-minute rows for a
    # merge join or a grouping (0.5 s of the 1.1 s here).
    _plan(cursor, hashjoin=True, sort=False)
    cursor.execute(
        f"""
        INSERT INTO {table} (allocation_id, gpu_id, hour, allocated_s, observed_s, busy_s,
                             idle_s, mem_held_idle_s)
        SELECT x.allocation_id, x.gpu_id, x.hour, x.alloc,
               COALESCE(f.cov, 0) + COALESCE(q.cov, 0),
               COALESCE(f.busy, 0) + COALESCE(q.busy, 0),
               COALESCE(f.idle, 0) + COALESCE(q.idle, 0),
               COALESCE(f.held, 0) + COALESCE(q.held, 0)
        FROM (
            SELECT a.allocation_id, a.gpu_id, h.hour,
                   CASE WHEN a.e < h.hour + {HOUR_S} THEN a.e ELSE h.hour + {HOUR_S} END
                   - CASE WHEN a.s > h.hour THEN a.s ELSE h.hour END AS alloc
            FROM fw_alloc a
            JOIN (SELECT DISTINCT gpu_id, hour FROM fw_hour) h
              ON h.gpu_id = a.gpu_id AND a.s < h.hour + {HOUR_S} AND a.e > h.hour
        ) x
        LEFT JOIN fw_whole f
          ON f.allocation_id = x.allocation_id AND f.gpu_id = x.gpu_id AND f.hour = x.hour
        LEFT JOIN fw_q q
          ON q.allocation_id = x.allocation_id AND q.gpu_id = x.gpu_id AND q.hour = x.hour
        WHERE x.alloc > 0
        """,
        [],
    )
    rows = cursor.rowcount
    _plan(cursor, mergejoin=True, sort=True)
    return rows


_OVERLAP = "(CASE WHEN a.e < pc.hi THEN a.e ELSE pc.hi END - CASE WHEN a.s > pc.lo THEN a.s ELSE pc.lo END)"


def _days_touched(cursor) -> set[int]:
    cursor.execute(f"SELECT DISTINCT hour - hour %% {DAY_S} FROM fw_hour", [])
    return {int(row[0]) // DAY_S for row in cursor.fetchall()}


def _usage_daily_recompute(*, days: set[int]) -> int:
    """Replace ``UsageDaily`` for whole UTC days from the day's ``UsageHourly`` rows (days x
    projects x models: a handful of rows, so Python only assembles them). Those are already
    the sums of the hourly rows per allocated GPU, replaced and pruned with them: a day
    reads ~20 rows per project instead of one per allocated GPU and hour joined to its GPU,
    node and allocation (0.05 s a day for 1,000 GPUs, every tick for today and
    yesterday). MIG profiles stay apart: the efficiency selector prices whole days from
    these rows, an instance at its fraction."""
    from django.db.models import Sum

    if not days:
        return 0
    dates = [dt.date(1970, 1, 1) + dt.timedelta(days=d) for d in sorted(days)]
    UsageDaily.objects.filter(day__in=dates).delete()
    rows: list[UsageDaily] = []
    for day_number, date in zip(sorted(days), dates, strict=True):
        lo = day_number * DAY_S
        grouped = (
            UsageHourly.objects.filter(hour__gte=lo, hour__lt=lo + DAY_S)
            .values("project_id", "project__team_id", "cluster_id", "gpu_model", "mig_profile")
            .annotate(
                allocated=Sum("allocated_s"),
                observed=Sum("observed_s"),
                busy=Sum("busy_s"),
                idle=Sum("idle_s"),
                held=Sum("mem_held_idle_s"),
            )
            .order_by()
        )
        for g in grouped:
            rows.append(
                UsageDaily(
                    day=date,
                    team_id=g["project__team_id"],
                    project_id=g["project_id"],
                    cluster_id=g["cluster_id"],
                    gpu_model=g["gpu_model"],
                    mig_profile=g["mig_profile"] or "",
                    allocated_s=g["allocated"] or 0.0,
                    observed_s=g["observed"] or 0.0,
                    busy_s=g["busy"] or 0.0,
                    idle_s=g["idle"] or 0.0,
                    mem_held_idle_s=g["held"] or 0.0,
                )
            )
    UsageDaily.objects.bulk_create(rows, batch_size=1000)
    return len(rows)


def _usage_hourly_recompute(cursor, *, hours: list[int]) -> int:
    """Replace ``UsageHourly`` for every hour in ``fw_hour`` from the hourly rows: whole hours
    (every GPU's rows of them), so a row stays the sum of exactly its hour's rows. ``hours``:
    those of ``fw_hour`` (``_hours_listed``)."""
    table, hourly = _t(UsageHourly), _t(AllocationGpuHourly)
    in_hours, hour_params = _in_list("hour", hours)
    cursor.execute(f"DELETE FROM {table} WHERE {in_hours}", hour_params)
    in_hours, hour_params = _in_list("h.hour", hours)
    cursor.execute(
        f"""
        INSERT INTO {table} (hour, project_id, cluster_id, gpu_model, mig_profile,
                             allocated_s, observed_s, busy_s, idle_s, mem_held_idle_s)
        SELECT h.hour, a.project_id, n.cluster_id, COALESCE(p.model_name, g.model_name),
               g.mig_profile, SUM(h.allocated_s), SUM(h.observed_s), SUM(h.busy_s),
               SUM(h.idle_s), SUM(h.mem_held_idle_s)
        FROM {hourly} h
        JOIN tenancy_allocation a ON a.id = h.allocation_id
        JOIN fleet_gpu g ON g.id = h.gpu_id
        LEFT JOIN fleet_gpu p ON p.id = g.mig_parent_id
        JOIN fleet_node n ON n.id = g.node_id
        WHERE {in_hours}
        GROUP BY h.hour, a.project_id, n.cluster_id, COALESCE(p.model_name, g.model_name),
                 g.mig_profile
        """,
        hour_params,
    )
    return cursor.rowcount


def _busy_by_gpu(*, gpu_ids: list[int], lo: int, hi: int) -> dict[int, float]:
    """Busy seconds of each of ``gpu_ids`` over its 5-minute rows with a bucket in [lo, hi).

    By the GPUs' ids: one short range of the (GPU, bucket) key each, the pages read once (a
    bitmap). PostgreSQL misjudges a list of 10,000 ids and would read the whole table
    instead, every 5-minute row kept: 0.85 s a day with 7 days of 10,000 GPUs kept, against
    0.41 s so, and it grows with the history."""
    from django.db.models import Sum

    if hi <= lo:
        return {}
    with connection.cursor() as cursor:
        _plan(cursor, seqscan=False, indexscan=False)
    busy = dict(
        GpuRollup5m.objects.filter(gpu_id__in=gpu_ids, bucket__gte=lo, bucket__lt=hi)
        .values("gpu_id")
        .annotate(total=Sum("busy_s"))
        .values_list("gpu_id", "total")
        .order_by()
    )
    with connection.cursor() as cursor:
        _plan(cursor, seqscan=True, indexscan=True)
    return busy


def _physical_gpu_ids() -> list[int]:
    from apps.fleet.models import Gpu

    return list(Gpu.objects.filter(mig_parent__isnull=True).values_list("id", flat=True))


def _busy_of_days(*, days: set[int], lo: int, hi: int) -> dict[int, dict[int, float]]:
    """Each of ``days``' busy seconds per physical GPU from its 5-minute rows in [lo, hi):
    a split run's part reads those of its own time range (see ``_split_run``)."""
    gpu_ids = _physical_gpu_ids()
    return {
        day: _busy_by_gpu(gpu_ids=gpu_ids, lo=max(lo, day * DAY_S), hi=min(hi, (day + 1) * DAY_S))
        for day in sorted(days)
    }


def _capacity_daily_recompute(
    *, days: set[int], now_ts: int, busy: dict[int, dict[int, float]] | None = None
) -> int:
    """Replace ``CapacityDaily`` for whole UTC days (see the module docstring). ``busy``: the
    busy seconds per physical GPU of some of the days, already summed (by a split run's
    parts); the others' are read here."""
    from django.db.models import Q

    from apps.fleet.models import Gpu
    from apps.tenancy.models import AllocationGpu

    if not days:
        return 0
    dates = {d: dt.date(1970, 1, 1) + dt.timedelta(days=d) for d in sorted(days)}
    CapacityDaily.objects.filter(day__in=list(dates.values())).delete()
    lo_all = min(days) * DAY_S
    hi_all = min((max(days) + 1) * DAY_S, now_ts)
    if hi_all <= lo_all:
        return 0
    gpus = {
        g["id"]: g
        for g in Gpu.objects.filter(mig_parent__isnull=True).values(
            "id", "model_name", "node__cluster_id", "first_seen_at"
        )
    }
    # Allocation spans per physical GPU (MIG instances count for their parent).
    spans: dict[int, list[tuple[int, int]]] = defaultdict(list)
    held = AllocationGpu.objects.filter(
        allocation__start__lt=dt.datetime.fromtimestamp(hi_all, tz=dt.UTC)
    ).filter(
        Q(allocation__end__isnull=True)
        | Q(allocation__end__gt=dt.datetime.fromtimestamp(lo_all, tz=dt.UTC))
    )
    for gpu_id, parent_id, start, end in held.values_list(
        "gpu_id", "gpu__mig_parent_id", "allocation__start", "allocation__end"
    ):
        s = _epoch(start)
        e = min(_epoch(end) if end is not None else now_ts, now_ts)
        if e > s:
            spans[parent_id or gpu_id].append((s, e))
    acc: dict[tuple[int, int, str], list[float]] = {}
    for day_number in sorted(days):
        lo = day_number * DAY_S
        hi = min(lo + DAY_S, now_ts)
        if hi <= lo:
            continue
        if busy is not None and day_number in busy:
            day_busy = busy[day_number]
        else:
            day_busy = _busy_by_gpu(gpu_ids=list(gpus), lo=lo, hi=lo + DAY_S)
        for gpu_id, gpu in gpus.items():
            first = _epoch(gpu["first_seen_at"]) if gpu["first_seen_at"] else lo
            start = max(lo, first)
            if start >= hi:
                continue
            allocated = sum(
                max(0, min(e, hi) - max(s, start)) for s, e in spans_union(spans.get(gpu_id, []))
            )
            key = (day_number, gpu["node__cluster_id"], gpu["model_name"])
            row = acc.setdefault(key, [0.0, 0.0, 0.0])
            row[0] += hi - start
            row[1] += allocated
            row[2] += day_busy.get(gpu_id) or 0.0
    rows = [
        CapacityDaily(
            day=dates[day_number],
            cluster_id=cluster_id,
            gpu_model=model,
            capacity_s=cap,
            allocated_s=alloc,
            unallocated_s=cap - alloc,
            busy_s=busy_s,
        )
        for (day_number, cluster_id, model), (cap, alloc, busy_s) in sorted(acc.items())
    ]
    CapacityDaily.objects.bulk_create(rows, batch_size=1000)
    return len(rows)


class _Lock:
    """The rollup lock, held for a whole run: only one worker recomputes at a time, a
    second one returns at once instead of fighting over rows. A session-level advisory lock
    on PostgreSQL (a split run commits several transactions under it; a killed worker's lock
    goes with its connection). SQLite transactions here are IMMEDIATE: the first writer
    holds the database and a second one waits, which already serialises the rollup."""

    def __enter__(self) -> bool:
        self.held = True
        if _pg():
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", [_LOCK_KEY])
                self.held = bool(cursor.fetchone()[0])
        return self.held

    def __exit__(self, *exc) -> None:
        if self.held and _pg() and connection.is_usable():
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [_LOCK_KEY])


def session_tune(cursor, *, parallel_workers: int | None = None) -> None:
    """The PostgreSQL settings the rollup runs under, for the rest of the transaction (the
    benchmark's ceiling query runs under them too). ``parallel_workers`` overrides
    ``FLOPWATCH_ROLLUP_PARALLEL_WORKERS`` (the parts of a split run take none: the split
    already spreads the work over the cores)."""
    if not _pg():
        return
    # JIT compiles the CASE-heavy piece expressions for seconds before running them (the grid
    # path's pass over raw samples turns it on for itself, see ``_jit``), and the per-GPU
    # sort for LEAD must stay in memory.
    cursor.execute("SET LOCAL jit = off")
    cursor.execute("SET LOCAL work_mem = '256MB'")
    workers = parallel_workers
    if workers is None:
        workers = getattr(settings, "FLOPWATCH_ROLLUP_PARALLEL_WORKERS", None)
    if workers is not None:
        cursor.execute(f"SET LOCAL max_parallel_workers_per_gather = {int(workers)}")


def _reach(cap: int) -> tuple[int, int]:
    """How far a changed sample reaches, for the longest ``cap`` (2 intervals) it may have:
    ``kb`` seconds, whole buckets, either side (its own time spills forward, its
    predecessor's comes from behind); and the ``gap`` under which two islands of buckets
    are read as one."""
    kb = max(1, -(-cap // BUCKET_S)) * BUCKET_S
    return kb, BUCKET_S + 4 * kb


def _part_compute(
    cursor, *, now_ts: int, tick: bool, cap: int, horizon: int, part: tuple[int, int]
) -> dict:
    """Recompute the islands in ``fw_isl`` (GPUs and caps in ``fw_gpu``) and the hours they
    touch, plus on the tick the open hours of held GPUs inside ``part``: 5-minute rows,
    hourly rows per allocation and hourly usage. Returns the counts and the UTC days
    touched (whose daily rows the caller recomputes)."""
    steps: dict[str, float] = {}
    mark = time.perf_counter()
    kb, gap = _reach(cap)
    cursor.executemany(
        "INSERT INTO fw_off (j) VALUES (%s)", [(j,) for j in range(kb // BUCKET_S + 1)]
    )
    cursor.execute("SELECT MIN(tlo), MAX(thi), MAX(thi - tlo) FROM fw_isl")
    lo, hi, longest = cursor.fetchone()
    if lo is not None:
        hours = (int(longest) + 2 * HOUR_S) // HOUR_S + 1
        cursor.executemany("INSERT INTO fw_num (n) VALUES (%s)", [(n,) for n in range(hours)])
        cursor.execute(
            f"""INSERT INTO fw_hour (gpu_id, hour)
                SELECT DISTINCT i.gpu_id, (i.tlo - i.tlo %% {HOUR_S}) + {HOUR_S} * n.n
                FROM fw_isl i JOIN fw_num n
                  ON (i.tlo - i.tlo %% {HOUR_S}) + {HOUR_S} * n.n < i.thi""",
            [],
        )
    else:
        lo, hi = now_ts - HOUR_S, now_ts
    # Every allocation overlapping the hours to recompute, not only the islands: an hour's
    # rows are rewritten for every allocation of the GPU in it, including one that ended
    # long before the island's first bucket.
    _allocations_load(
        cursor,
        now_ts=now_ts,
        lo=(int(lo) - kb) // HOUR_S * HOUR_S,
        hi=max(-(-(int(hi) + kb) // HOUR_S) * HOUR_S, now_ts),
        open_hours=tick,
        part=part,
    )
    # 5-minute rows only where raw samples still exist: re-rolling a bucket past raw
    # retention would replace a good row with an empty one.
    cursor.execute("DELETE FROM fw_isl WHERE thi <= %s", [horizon])
    cursor.execute("UPDATE fw_isl SET tlo = %s WHERE tlo < %s", [horizon, horizon])
    # fw_claim goes without: only hash joins and a GROUP BY read it, and PostgreSQL
    # sizes it from its pages.
    _analyze(cursor, "fw_gpu", "fw_isl", "fw_hour", "fw_alloc", "fw_span")
    steps["prepare"] = time.perf_counter() - mark
    mark = time.perf_counter()
    gpu_rows, grid_rows = _gpu_5m_recompute(cursor, pad=kb)
    steps["gpu_5m"] = time.perf_counter() - mark
    mark = time.perf_counter()
    # Allocation boundaries are cut from samples read one cap (the largest of every GPU
    # loaded) beyond their buckets: all a piece needs, and a third of the rows of
    # reading whole neighbouring buckets.
    hours = _hours_listed(cursor)
    hourly_rows = _hourly_recompute(cursor, pad=cap, gap=gap, hours=hours)
    _usage_hourly_recompute(cursor, hours=hours)
    steps["hourly"] = time.perf_counter() - mark
    return {
        "gpu_rows": gpu_rows,
        "grid_rows": grid_rows,
        "hourly_rows": hourly_rows,
        "days": _days_touched(cursor),
        "steps": steps,
    }


def _clock_days(*, now_ts: int, tick: bool) -> set[int]:
    """The days the tick rewrites whatever was marked, today and yesterday: capacity and
    open allocations grow with the clock."""
    if not tick:
        return set()
    today = now_ts // DAY_S
    return {today, today - 1}


def _day_number(day: dt.date) -> int:
    return (day - dt.date(1970, 1, 1)).days


def _days_marked() -> set[int]:
    return {_day_number(day) for day in RollupPendingDay.objects.values_list("day", flat=True)}


def _days_write(
    *, days: set[int], now_ts: int, busy: dict[int, dict[int, float]] | None = None
) -> set[int]:
    """Rewrite the daily usage and capacity rows of ``days`` (day numbers since the epoch)
    and of every pending day mark, and delete those marks; returns the days written.
    ``busy``: see ``_capacity_daily_recompute``."""
    days = set(days)
    marked = list(RollupPendingDay.objects.values_list("day", flat=True))
    days |= {_day_number(day) for day in marked}
    _usage_daily_recompute(days=days)
    _capacity_daily_recompute(days=days, now_ts=now_ts, busy=busy)
    if marked:
        RollupPendingDay.objects.filter(day__in=marked).delete()
    return days


def _chunk_run(*, now_ts: int, limit: int, tick: bool) -> dict:
    """Claim, recompute and release up to ``limit`` pending buckets in one transaction;
    large work is split over several connections instead (``_split_run``).

    ``tick`` adds the work that depends on the clock rather than on marks: the current
    hours of open allocations and today's and yesterday's capacity.
    """
    horizon = now_ts - settings.FLOPWATCH_RAW_RETENTION_DAYS * DAY_S + DAY_S
    horizon -= horizon % BUCKET_S
    plan = _split_plan(limit=limit)
    if plan is not None:
        return _split_run(plan=plan, now_ts=now_ts, tick=tick, horizon=horizon)
    with transaction.atomic(), connection.cursor() as cursor:
        session_tune(cursor)
        mark = time.perf_counter()
        _temp_tables_reset(cursor)
        claimed = _claim(cursor, limit=limit)
        if claimed == 0 and not tick and not RollupPendingDay.objects.exists():
            return {"buckets": 0, "gpu_rows": 0, "grid_rows": 0, "hourly_rows": 0, "days": 0}
        cap = _gpus_load(cursor, source="fw_claim", open_allocations=tick)
        kb, gap = _reach(cap)
        # Islands of buckets to recompute: the claimed ones widened by the buckets a changed
        # sample can reach.
        _islands_build(cursor, src="fw_claim", dst="fw_isl", pad=kb, gap=gap)
        steps = {"claim": time.perf_counter() - mark}
        result = _part_compute(
            cursor, now_ts=now_ts, tick=tick, cap=cap, horizon=horizon, part=_EVER
        )
        steps.update(result["steps"])
        mark = time.perf_counter()
        days = _days_write(
            days=result["days"] | _clock_days(now_ts=now_ts, tick=tick), now_ts=now_ts
        )
        steps["daily"] = time.perf_counter() - mark
        mark = time.perf_counter()
        _release(cursor)
        steps["release"] = time.perf_counter() - mark
        return {
            "buckets": claimed,
            "more": claimed >= limit,
            "gpu_rows": result["gpu_rows"],
            "grid_rows": result["grid_rows"],
            "hourly_rows": result["hourly_rows"],
            "days": len(days),
            "parts": 1,
            "steps": steps,
        }


# --- Split runs --------------------------------------------------------------------------------
# A large backlog (an import, an agent back from an outage, a fresh install's history) is
# split by time into as many parts as FLOPWATCH_ROLLUP_CONNECTIONS, each recomputed by its
# own database connection at the same time: every step of the work then uses the database
# host's cores, not only the one aggregation PostgreSQL can run in parallel (whose partial
# states it merges on one core afterwards). Parts are cut at whole hours, so hourly rows (per
# allocation, GPU and hour) and hourly usage (per hour, every GPU) each have one owner.
#
# Each part claims the marks of its range, recomputes, releases them and commits on its own.
# A mark within ``kb`` (the reach of a changed sample) of a cut changes buckets on both sides:
# the coordinator claims those before the parts start, both parts recompute what such a mark
# reaches on their side, and the coordinator releases them once every part has committed,
# with the daily rows of the days the run touched, which it marked (RollupPendingDay) in a
# transaction of its own before the parts started. A run killed at any point therefore
# leaves marked whatever it has not finished, and the next run ends where an uninterrupted
# one does.

# Open-ended at both ends, so that every hour has an owner.
_EVER = (-(2**62), 2**62)


def _split_plan(*, limit: int) -> dict | None:
    """The chunk's range of buckets (whole hours, oldest first, at most about ``limit``
    marks) and where to cut it, when the pending work is worth splitting; else None."""
    connections = int(getattr(settings, "FLOPWATCH_ROLLUP_CONNECTIONS", 1))
    least = int(getattr(settings, "FLOPWATCH_ROLLUP_SPLIT_MIN_BUCKETS", 20_000))
    # Inside a caller's transaction the parts, on connections of their own, would not see
    # what it has not committed: the work then runs unsplit in it.
    if not _pg() or connections <= 1 or connection.in_atomic_block:
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT bucket - bucket %% {HOUR_S}, COUNT(*) FROM {_t(RollupPending)} "
            "GROUP BY 1 ORDER BY 1",
            [],
        )
        hours = [(int(hour), int(n)) for hour, n in cursor.fetchall()]
    taken: list[tuple[int, int]] = []
    for hour, n in hours:
        if taken and sum(m for _, m in taken) + n > limit:
            break
        taken.append((hour, n))
    total = sum(n for _, n in taken)
    if total < max(least, 2) or len(taken) < 2:
        return None
    # Cut after the hour that brings the part closest to its share of the marks.
    cuts: list[int] = []
    seen = 0
    for index, (_, n) in enumerate(taken[:-1]):
        seen += n
        share = total * (len(cuts) + 1) / connections
        if len(cuts) < connections - 1 and share - seen < seen + taken[index + 1][1] - share:
            cuts.append(taken[index + 1][0])
    bounds = [_EVER[0], *cuts, _EVER[1]]
    return {
        "first": taken[0][0],
        "end": taken[-1][0] + HOUR_S,
        "more": len(taken) < len(hours),
        "parts": list(itertools.pairwise(bounds)),
    }


def _split_run(*, plan: dict, now_ts: int, tick: bool, horizon: int) -> dict:
    """Recompute the chunk ``plan`` describes as its parts, one thread and database
    connection each, all at once (see "Split runs" above)."""
    from concurrent.futures import ThreadPoolExecutor

    first, end, parts = plan["first"], plan["end"], plan["parts"]
    cuts = [lo for lo, _ in parts[1:]]
    mark = time.perf_counter()
    with connection.cursor() as cursor:
        # The longest cap in the fleet bounds how far any mark reaches: the parts and the
        # boundary claim must agree on it before any part has read its marks.
        cursor.execute("SELECT MAX(sample_interval_s) FROM fleet_node")
        cap = 2 * int(cursor.fetchone()[0] or settings.FLOPWATCH_DEFAULT_INTERVAL_S)
    kb, gap = _reach(cap)
    days = set(range((first - kb) // DAY_S, (end + kb) // DAY_S + 1))
    days |= _clock_days(now_ts=now_ts, tick=tick)
    with transaction.atomic(), connection.cursor() as cursor:
        _temp_tables_reset(cursor)
        near = " OR ".join(["(bucket >= %s AND bucket < %s)"] * len(cuts))
        cursor.execute(
            f"INSERT INTO fw_claim (gpu_id, bucket, marked_at) "
            f"SELECT gpu_id, bucket, marked_at FROM {_t(RollupPending)} WHERE {near}",
            [v for cut in cuts for v in (cut - kb, cut + kb)],
        )
        RollupPendingDay.objects.bulk_create(
            [RollupPendingDay(day=dt.date(1970, 1, 1) + dt.timedelta(days=d)) for d in days],
            ignore_conflicts=True,
        )
    claim_s = time.perf_counter() - mark

    def compute(part: tuple[int, int]) -> dict:
        lo, hi = part
        try:
            with connection.cursor() as cursor:
                # A fresh connection, closed after the part: room for the work tables in
                # memory (the aggregate table alone is ~35 MB for 5M samples; at the
                # default 8 MB its pages go out to a file and are read back).
                cursor.execute("SET temp_buffers = '256MB'")
            with transaction.atomic(), connection.cursor() as cursor:
                session_tune(cursor, parallel_workers=0)
                _temp_tables_reset(cursor)
                pending = _t(RollupPending)
                inner_lo = first if lo == _EVER[0] else lo + kb
                inner_hi = end if hi == _EVER[1] else hi - kb
                # The marks only this part's buckets depend on, of buckets before the last
                # hour, are deleted as they are claimed (one pass instead of a claim and a
                # join to release them): nothing marks such a bucket again but late data,
                # whose writer then waits for this part to commit. Newer marks are marked
                # again by every agent push, so they are released at the end, and a push
                # never waits for long. A GPU whose deleted marks form one unbroken run (a
                # backlog, an import) is kept as that run, the others' marks row by row:
                # 167,000 marks alone in psql, 0.25 s instead of 0.39 s (two parts at once:
                # 0.25-0.41 s each either way).
                settled = min(inner_hi, now_ts - now_ts % HOUR_S - HOUR_S)
                cursor.execute(
                    f"""WITH taken AS (
                          DELETE FROM {pending} WHERE bucket >= %s AND bucket < %s
                          RETURNING gpu_id, bucket),
                        runs AS (
                          SELECT gpu_id, MIN(bucket) AS lo, MAX(bucket) AS hi, COUNT(*) AS n,
                                 CASE WHEN COUNT(*) * {BUCKET_S} = MAX(bucket) - MIN(bucket)
                                           + {BUCKET_S} THEN 1 ELSE 0 END AS whole
                          FROM taken GROUP BY gpu_id),
                        kept AS (
                          INSERT INTO fw_run (gpu_id, lo, hi, n)
                          SELECT gpu_id, lo, hi, n FROM runs WHERE whole = 1)
                        INSERT INTO fw_claim (gpu_id, bucket)
                        SELECT t.gpu_id, t.bucket FROM taken t
                        JOIN runs r ON r.gpu_id = t.gpu_id AND r.whole = 0""",
                    [inner_lo, settled],
                )
                # And the others whose reach touches this part, boundary marks on either
                # side included (the rows just deleted are gone for this transaction).
                cursor.execute(
                    f"INSERT INTO fw_claim (gpu_id, bucket, marked_at) "
                    f"SELECT gpu_id, bucket, marked_at FROM {pending} "
                    "WHERE bucket >= %s AND bucket < %s",
                    [max(lo - kb, first), min(hi + kb, end)],
                )
                _islands_build(cursor, src="fw_claim", dst="fw_isl", pad=kb, gap=gap, runs="fw_run")
                cursor.execute("DELETE FROM fw_isl WHERE thi <= %s OR tlo >= %s", [lo, hi])
                cursor.execute("UPDATE fw_isl SET tlo = %s WHERE tlo < %s", [lo, lo])
                cursor.execute("UPDATE fw_isl SET thi = %s WHERE thi > %s", [hi, hi])
                _gpus_load(cursor, source="fw_isl", open_allocations=tick)
                result = _part_compute(
                    cursor, now_ts=now_ts, tick=tick, cap=cap, horizon=horizon, part=part
                )
                mark = time.perf_counter()
                # The capacity rows' busy seconds of every day to rewrite, from this part's
                # own time range: read here, beside the other parts, rather than by the
                # coordinator once they are all done (0.15 s of 5-minute rows a day for
                # 1,000 GPUs). Only this run writes the 5-minute rows of the range (the
                # lock), so the parts' sums are what it ends with.
                result["busy"] = _busy_of_days(days=_days_marked(), lo=lo, hi=hi)
                result["steps"]["busy"] = time.perf_counter() - mark
                mark = time.perf_counter()
                if settled < inner_hi:
                    _release(cursor, lo=max(inner_lo, settled), hi=inner_hi)
                # The runs lie inside the part, between its boundary marks.
                cursor.execute(
                    "SELECT (SELECT COUNT(*) FROM fw_claim WHERE bucket >= %s AND bucket < %s)"
                    " + (SELECT COALESCE(SUM(n), 0) FROM fw_run)",
                    [max(lo, first), min(hi, end)],
                )
                result["buckets"] = int(cursor.fetchone()[0])
                result["steps"]["release"] = time.perf_counter() - mark
                return result
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix="rollup") as pool:
        results = [future.result() for future in [pool.submit(compute, p) for p in parts]]
    steps: dict[str, float] = {"claim": claim_s}
    for result in results:
        for key, seconds in result["steps"].items():
            # The parts run side by side: the slowest one's time is the step's.
            steps[key] = max(steps.get(key, 0.0), seconds)
    mark = time.perf_counter()
    with transaction.atomic(), connection.cursor() as cursor:
        session_tune(cursor)
        for result in results:
            days |= result["days"]
        # A day's busy seconds are the sum of the parts' (their ranges cover all time);
        # a day some part did not sum (marked meanwhile) is read whole.
        summed = set.intersection(*(set(r["busy"]) for r in results))
        busy = {
            day: {
                gpu_id: sum(r["busy"][day].get(gpu_id) or 0.0 for r in results)
                for gpu_id in set().union(*(r["busy"][day] for r in results))
            }
            for day in summed
        }
        days = _days_write(days=days, now_ts=now_ts, busy=busy)
        steps["daily"] = time.perf_counter() - mark
        mark = time.perf_counter()
        _release(cursor)
        steps["release"] = steps.get("release", 0.0) + time.perf_counter() - mark
    return {
        "buckets": sum(r["buckets"] for r in results),
        "more": plan["more"],
        "gpu_rows": sum(r["gpu_rows"] for r in results),
        "grid_rows": sum(r["grid_rows"] for r in results),
        "hourly_rows": sum(r["hourly_rows"] for r in results),
        "days": len(days),
        "parts": len(parts),
        "steps": steps,
    }


def rollups_run_pending(
    *,
    now: dt.datetime | None = None,
    chunk: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Recompute every pending bucket and what depends on it, synchronously.

    Works in chunks of about ``FLOPWATCH_ROLLUP_CHUNK`` pending buckets, one transaction
    each, or one per part when a chunk is split over several connections. Returns a
    summary: buckets, gpu_rows (grid_rows of them by the grid path), hourly_rows, days,
    chunks, parts (the most connections one chunk was split over), seconds, and
    ``busy: True`` when another worker held the lock (nothing done here; it does the work).
    ``progress(done, total)`` is called after each chunk.
    """
    now = now or timezone.now()
    now_ts = _epoch(now)
    limit = chunk or int(getattr(settings, "FLOPWATCH_ROLLUP_CHUNK", 500_000))
    started = time.monotonic()
    # Only a progress bar needs the total (a count of every mark: 30 ms for 334,000).
    total = RollupPending.objects.count() if progress else 0
    summary: dict = {
        "buckets": 0,
        "gpu_rows": 0,
        "grid_rows": 0,
        "hourly_rows": 0,
        "days": 0,
        "chunks": 0,
        "parts": 1,
    }
    with _Lock() as held:
        if not held:
            summary["busy"] = True
            summary["seconds"] = round(time.monotonic() - started, 3)
            return summary
        tick = True
        while True:
            result = _chunk_run(now_ts=now_ts, limit=limit, tick=tick)
            tick = False
            summary["chunks"] += 1
            for key in ("buckets", "gpu_rows", "grid_rows", "hourly_rows", "days"):
                summary[key] += result[key]
            summary["parts"] = max(summary["parts"], result.get("parts", 1))
            for key, seconds in result.get("steps", {}).items():
                summary.setdefault("steps", {}).setdefault(key, 0.0)
                summary["steps"][key] = round(summary["steps"][key] + seconds, 3)
            if progress:
                progress(summary["buckets"], total)
            if not result.get("more"):
                break
    summary["seconds"] = round(time.monotonic() - started, 3)
    return summary


def rollups_prune(*, now: dt.datetime | None = None) -> dict:
    """Delete 5-minute rollups older than ``FLOPWATCH_ROLLUP_5M_RETENTION_DAYS`` and hourly
    ones older than ``FLOPWATCH_HOURLY_RETENTION_DAYS`` (``UsageHourly`` with them, so it
    never holds an hour the hourly rows lost; counted under "hourly" only for the per-GPU
    rows); daily rows are kept forever. Idempotent: a second run finds nothing more to
    delete."""
    now_ts = _epoch(now or timezone.now())
    cut_5m = now_ts - settings.FLOPWATCH_ROLLUP_5M_RETENTION_DAYS * DAY_S
    cut_hourly = now_ts - settings.FLOPWATCH_HOURLY_RETENTION_DAYS * DAY_S
    from apps.fleet.models import Gpu

    # GPU by GPU along the (GPU, bucket) key, the oldest rows of each (there is no index by
    # bucket alone); a deleted GPU's rows went with it.
    deleted_5m, _ = GpuRollup5m.objects.filter(
        gpu_id__in=Gpu.objects.values("id"), bucket__lt=cut_5m - cut_5m % BUCKET_S
    ).delete()
    deleted_hourly, _ = AllocationGpuHourly.objects.filter(
        hour__lt=cut_hourly - cut_hourly % HOUR_S
    ).delete()
    UsageHourly.objects.filter(hour__lt=cut_hourly - cut_hourly % HOUR_S).delete()
    return {"gpu_5m": deleted_5m, "hourly": deleted_hourly}


__all__ = [
    "BUCKET_S",
    "idle_threshold",
    "rollups_prune",
    "rollups_run_pending",
    "spans_union",
]
