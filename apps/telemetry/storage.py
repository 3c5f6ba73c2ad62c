"""Raw sample storage: the one place that writes ``telemetry_rawsample`` in bulk.

PostgreSQL: the table is range-partitioned by UTC day on ``ts`` (migration 0003). A batch is
written as one binary COPY into a temporary staging table, then ``INSERT ... SELECT ... ON
CONFLICT DO NOTHING`` moves it into the partitions: COPY is the fastest way in, and the
conflict clause gives "first value wins" without a round trip per row. Nulls travel as NaN
in the staging table (JSON cannot carry NaN, so a NaN can only mean "no value") which keeps
every row the same width, so the COPY buffer is built by NumPy in one go.

SQLite: batched ``INSERT OR IGNORE`` in the caller's transaction.

Other importers (CSV, Prometheus) call :func:`raw_samples_store` with column arrays.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Mapping
from datetime import UTC, datetime

import numpy as np
from django.conf import settings
from django.db import connection as default_connection
from django.db import transaction

log = logging.getLogger(__name__)

DAY_S = 86_400
TABLE = "telemetry_rawsample"
STAGE = "telemetry_rawsample_stage"
PARTITION_PREFIX = "telemetry_rawsample_p"
# Catches rows of days without a partition (ORM inserts in tests and scripts, a partition
# dropped under a running insert): nothing is ever refused for lack of a partition. Rows in
# it are moved into their day's partition when that is created, and expire like the rest.
DEFAULT_PARTITION = "telemetry_rawsample_default"
# Value columns of RawSample, in table order. ``xid`` is an integer column; the rest float.
VALUE_FIELDS = (
    "util_pct",
    "sm_active",
    "sm_occupancy",
    "tensor_active",
    "dram_active",
    "gr_engine_active",
    "mem_used_mib",
    "power_w",
    "temp_c",
    "sm_clock_mhz",
    "energy_mj",
    "xid",
)
SQLITE_BATCH = 2_000
PARTITION_CACHE_S = 60.0

_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
_COPY_TRAILER = (-1).to_bytes(2, "big", signed=True)

# Day starts of partitions this process knows exist, and when it last looked.
_partitions_lock = threading.Lock()
_partitions_known: set[int] = set()
_partitions_checked_at = 0.0
# Raw psycopg connections whose staging table was created outside a transaction.
_staged_connections: weakref.WeakSet = weakref.WeakSet()


def day_of(ts: int) -> int:
    return int(ts) - int(ts) % DAY_S


def partition_name(day_start: int) -> str:
    return PARTITION_PREFIX + datetime.fromtimestamp(day_start, tz=UTC).strftime("%Y%m%d")


def is_postgres(connection=None) -> bool:
    return (connection or default_connection).vendor == "postgresql"


# --- Binary COPY ------------------------------------------------------------------------------


def copy_buffer(columns: list[tuple[np.ndarray, str]]) -> bytes:
    """A PostgreSQL binary COPY stream of fixed-width rows.

    ``columns`` are equal-length arrays with their wire type: ``"int8"``, ``"int4"`` or
    ``"float8"``. No value may be NULL (use NaN in float columns and NULLIF on the way out).
    """
    wire = {"int8": (">i8", 8), "int4": (">i4", 4), "float8": (">f8", 8)}
    n = len(columns[0][0]) if columns else 0
    fields: list[tuple[str, str]] = [("count", ">i2")]
    for i, (_, kind) in enumerate(columns):
        fields.append((f"l{i}", ">i4"))
        fields.append((f"v{i}", wire[kind][0]))
    rows = np.empty(n, dtype=np.dtype(fields))
    rows["count"] = len(columns)
    for i, (values, kind) in enumerate(columns):
        rows[f"l{i}"] = wire[kind][1]
        rows[f"v{i}"] = values
    return b"".join((_COPY_HEADER, rows.tobytes(), _COPY_TRAILER))


def _stage_sql() -> str:
    value_cols = ", ".join(f"{name} double precision" for name in VALUE_FIELDS)
    # ON COMMIT DELETE ROWS: the staging rows vanish with the transaction that wrote them.
    return (
        f"CREATE TEMP TABLE IF NOT EXISTS {STAGE} (gpu_id bigint, ts bigint, {value_cols}) "
        "ON COMMIT DELETE ROWS"
    )


def raw_stage_prepare(connection=None) -> None:
    """Create this session's staging table outside any transaction, once per connection.

    Created inside a transaction, the table would vanish again if that transaction rolled
    back; created in autocommit mode it lives as long as the connection, and the hot path
    saves a round trip per batch. Inside a transaction this does nothing (the store then
    creates the table itself, every time).
    """
    connection = connection or default_connection
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        return
    connection.ensure_connection()
    raw = connection.connection
    if raw in _staged_connections:
        return
    with connection.cursor() as cursor:
        cursor.execute(_stage_sql())
    _staged_connections.add(raw)


def _direct_columns(values: Mapping[str, np.ndarray]) -> list[str] | None:
    """The value columns to COPY straight into the table, or None when some column mixes
    values and nulls (a fixed-width binary row cannot carry a NULL; staging handles it)."""
    names = []
    for name in VALUE_FIELDS:
        arr = values.get(name)
        if arr is None:
            continue
        missing = np.isnan(arr)
        if missing.all():
            continue
        if missing.any():
            return None
        names.append(name)
    return names


def _store_postgres_direct(
    cursor, gpu_ids: np.ndarray, ts: np.ndarray, values: Mapping[str, np.ndarray], names: list
) -> int:
    """Leave out keys already stored (one index probe per GPU), COPY the rest straight in.

    Cheaper for PostgreSQL than staging + ``INSERT ... ON CONFLICT``; a concurrent writer of
    the same keys makes the COPY fail with a unique violation, and the caller then retries
    the whole batch through the staging path.
    """
    cursor.execute(
        f"SELECT gpu_id, ts FROM {TABLE} WHERE gpu_id = ANY(%s) AND ts >= %s AND ts <= %s",  # noqa: S608
        [np.unique(gpu_ids).tolist(), int(ts.min()), int(ts.max())],
    )
    existing = cursor.fetchall()
    keep = None
    if existing:
        stored = np.array(existing, dtype=np.int64)
        keep = ~np.isin(gpu_ids * (1 << 34) + ts, stored[:, 0] * (1 << 34) + stored[:, 1])
        if not keep.any():
            return 0
        gpu_ids, ts = gpu_ids[keep], ts[keep]
    columns: list[tuple[np.ndarray, str]] = [(gpu_ids, "int8"), (ts, "int8")]
    for name in names:
        arr = values[name] if keep is None else values[name][keep]
        columns.append((arr.astype(np.int32), "int4") if name == "xid" else (arr, "float8"))
    with cursor.copy(
        f"COPY {TABLE} (gpu_id, ts{''.join(', ' + n for n in names)}) FROM STDIN (FORMAT BINARY)"
    ) as copy:
        copy.write(copy_buffer(columns))
    return len(ts)


def _store_postgres(
    gpu_ids: np.ndarray, ts: np.ndarray, values: Mapping[str, np.ndarray], direct: bool = True
) -> int:
    names = _direct_columns(values) if direct else None
    if names is not None:
        with default_connection.cursor() as django_cursor, default_connection.wrap_database_errors:
            return _store_postgres_direct(django_cursor.cursor, gpu_ids, ts, values, names)
    n = len(ts)
    nan = np.full(n, np.nan)
    columns: list[tuple[np.ndarray, str]] = [(gpu_ids, "int8"), (ts, "int8")]
    columns += [(values.get(name, nan), "float8") for name in VALUE_FIELDS]
    buffer = copy_buffer(columns)
    select = ", ".join(
        f"NULLIF({name}, 'NaN')::integer" if name == "xid" else f"NULLIF({name}, 'NaN')"
        for name in VALUE_FIELDS
    )
    names = ", ".join(VALUE_FIELDS)
    # The psycopg cursor itself, for COPY; wrap_database_errors turns its errors into Django's
    # (OperationalError and friends), which callers already know how to answer.
    with default_connection.cursor() as django_cursor, default_connection.wrap_database_errors:
        cursor = django_cursor.cursor
        if cursor.connection not in _staged_connections:
            cursor.execute(_stage_sql())
        with cursor.copy(f"COPY {STAGE} FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(buffer)
        # Both statements in one round trip (no parameters: a simple query); the DELETE
        # empties the staging table for a second store in the same transaction.
        cursor.execute(
            f"INSERT INTO {TABLE} (gpu_id, ts, {names}) SELECT gpu_id, ts, {select} "  # noqa: S608
            f"FROM {STAGE} ON CONFLICT DO NOTHING; DELETE FROM {STAGE}"
        )
        inserted = cursor.rowcount  # of the INSERT, the first result
    return inserted


def _store_sqlite(gpu_ids: np.ndarray, ts: np.ndarray, values: Mapping[str, np.ndarray]) -> int:
    names = [name for name in VALUE_FIELDS if name in values]
    cols = [gpu_ids.astype(np.int64).tolist(), ts.astype(np.int64).tolist()]
    for name in names:
        arr = values[name]
        obj = arr.astype(object)
        obj[np.isnan(arr)] = None
        if name == "xid":
            obj = [None if v is None else int(v) for v in obj.tolist()]
            cols.append(obj)
        else:
            cols.append(obj.tolist())
    rows = list(zip(*cols, strict=True))
    placeholders = ", ".join(["%s"] * (2 + len(names)))
    sql = (
        f"INSERT OR IGNORE INTO {TABLE} (gpu_id, ts{''.join(', ' + n for n in names)}) "  # noqa: S608
        f"VALUES ({placeholders})"
    )
    inserted = 0
    with default_connection.cursor() as cursor:
        for i in range(0, len(rows), SQLITE_BATCH):
            cursor.executemany(sql, rows[i : i + SQLITE_BATCH])
            inserted += max(cursor.rowcount, 0)
    return inserted


def raw_samples_store(
    *, gpu_ids: np.ndarray, ts: np.ndarray, values: Mapping[str, np.ndarray], direct: bool = True
) -> int:
    """Store samples keyed by (gpu_id, ts); the first value stored wins. Returns rows inserted.

    ``gpu_ids`` and ``ts`` are int64 arrays; ``values`` maps a field of ``VALUE_FIELDS`` to a
    float64 array with NaN for "no value" (missing fields are NULL). Rows must be unique by
    (gpu_id, ts) within the call. Runs in the caller's transaction; on PostgreSQL the day
    partitions should exist (:func:`raw_partitions_ensure`, outside that transaction; rows
    of other days land in the default partition). On PostgreSQL, batches without mixed
    nulls are checked against the index and COPYed straight in; a concurrent writer of the
    same keys then raises IntegrityError, and the caller retries with ``direct=False``
    (staging + ``ON CONFLICT DO NOTHING``, always safe).
    """
    if len(ts) == 0:
        return 0
    if is_postgres():
        return _store_postgres(gpu_ids, ts, values, direct=direct)
    return _store_sqlite(gpu_ids, ts, values)


# --- Partitions (PostgreSQL) ------------------------------------------------------------------


def _partitions_existing(cursor) -> set[int]:
    cursor.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = %s",
        [TABLE],
    )
    days = set()
    for (name,) in cursor.fetchall():
        if name.startswith(PARTITION_PREFIX):
            try:
                day = datetime.strptime(name[len(PARTITION_PREFIX) :] + "+0000", "%Y%m%d%z")
            except ValueError:
                continue
            days.add(int(day.timestamp()))
    return days


def raw_partitions_forget() -> None:
    """Forget what this process knows about partitions (after a drop, or an insert error)."""
    global _partitions_checked_at
    with _partitions_lock:
        _partitions_known.clear()
        _partitions_checked_at = 0.0


def _partition_create(cursor, name: str, day: int) -> None:
    """Create one day partition; rows of that day already in the default partition move in."""
    low, high = day, day + DAY_S
    cursor.execute(
        f"SELECT 1 FROM {DEFAULT_PARTITION} WHERE ts >= %s AND ts < %s LIMIT 1",  # noqa: S608
        [low, high],
    )
    if cursor.fetchone() is None:
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {TABLE} "
            f"FOR VALUES FROM ({low}) TO ({high})"
        )
        return
    cursor.execute(f"CREATE TABLE {name} (LIKE {TABLE} INCLUDING DEFAULTS)")
    cursor.execute(
        f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION} WHERE ts >= %s AND ts < %s "  # noqa: S608
        f"RETURNING *) INSERT INTO {name} SELECT * FROM moved",
        [low, high],
    )
    cursor.execute(
        f"ALTER TABLE {TABLE} ATTACH PARTITION {name} FOR VALUES FROM ({low}) TO ({high})"
    )


def raw_partitions_ensure(*, start_ts: int, end_ts: int, connection=None) -> list[str]:
    """Create the day partitions covering ``start_ts..end_ts`` that do not exist yet.

    Call it outside the transaction that inserts: creating a partition locks the parent
    table, and holding that lock until a batch commits would stall every other writer.
    Returns the names created (none on SQLite).
    """
    global _partitions_checked_at
    connection = connection or default_connection
    if not is_postgres(connection):
        return []
    days = set(range(day_of(start_ts), day_of(end_ts) + 1, DAY_S))
    with _partitions_lock:
        fresh = time.monotonic() - _partitions_checked_at < PARTITION_CACHE_S
        if fresh and days <= _partitions_known:
            return []
    created: list[str] = []
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {DEFAULT_PARTITION} PARTITION OF {TABLE} DEFAULT"
        )
        existing = _partitions_existing(cursor)
        for day in sorted(days - existing):
            name = partition_name(day)
            try:
                with transaction.atomic(using=connection.alias):
                    _partition_create(cursor, name, day)
                created.append(name)
            except Exception as exc:  # another process created it at the same moment
                log.info("partition %s not created here: %s", name, exc)
        existing = _partitions_existing(cursor)
    with _partitions_lock:
        _partitions_known.clear()
        _partitions_known.update(existing)
        _partitions_checked_at = time.monotonic()
    if created:
        log.info("created raw sample partitions %s", ", ".join(created))
    return created


# --- Retention --------------------------------------------------------------------------------


def raw_samples_expire(*, now: datetime | None = None, ahead_days: int = 2) -> dict:
    """Drop raw samples older than ``FLOPWATCH_RAW_RETENTION_DAYS`` and create partitions
    ``ahead_days`` ahead. PostgreSQL drops whole day partitions; SQLite deletes in batches.
    Idempotent."""
    now_ts = int((now or datetime.now(tz=UTC)).timestamp())
    cutoff = day_of(now_ts) - settings.FLOPWATCH_RAW_RETENTION_DAYS * DAY_S
    if not is_postgres():
        deleted = 0
        with default_connection.cursor() as cursor:
            while True:
                with transaction.atomic():
                    cursor.execute(
                        f"DELETE FROM {TABLE} WHERE rowid IN "  # noqa: S608
                        f"(SELECT rowid FROM {TABLE} WHERE ts < %s LIMIT %s)",
                        [cutoff, 10_000],
                    )
                    count = cursor.rowcount
                deleted += max(count, 0)
                if count < 10_000:
                    break
        return {"deleted": deleted, "dropped": [], "created": []}
    created = raw_partitions_ensure(start_ts=now_ts - DAY_S, end_ts=now_ts + ahead_days * DAY_S)
    dropped: list[str] = []
    with default_connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {DEFAULT_PARTITION} WHERE ts < %s", [cutoff])  # noqa: S608
        for day in sorted(_partitions_existing(cursor)):
            if day + DAY_S <= cutoff:
                name = partition_name(day)
                cursor.execute(f"DROP TABLE IF EXISTS {name}")
                dropped.append(name)
    if dropped:
        raw_partitions_forget()
        log.info("dropped raw sample partitions %s", ", ".join(dropped))
    return {"deleted": 0, "dropped": dropped, "created": created}
