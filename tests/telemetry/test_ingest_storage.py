"""Raw storage: retention (partitions dropped on PostgreSQL, batched deletes on SQLite),
partitions created ahead and on demand for imported history."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import connection

from apps.telemetry.ingest_tasks import raw_samples_expire_task
from apps.telemetry.models import RawSample
from apps.telemetry.services import gpu_samples_ingest, ingest_caches_clear
from apps.telemetry.storage import DAY_S, partition_name, raw_samples_expire
from tests.conftest import database_is_postgres
from tests.telemetry.ingest_helpers import make_batch, node_with_token

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
NOW_TS = int(NOW.timestamp())


@pytest.fixture(autouse=True)
def _fresh_caches():
    ingest_caches_clear()
    yield
    ingest_caches_clear()


def partitions() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'telemetry_rawsample'"
        )
        return {row[0] for row in cursor.fetchall()}


@pytest.mark.django_db(transaction=True)
def test_retention_keeps_recent_and_drops_old(settings):
    settings.FLOPWATCH_RAW_RETENTION_DAYS = 14
    node, _ = node_with_token()
    old = NOW_TS - 20 * DAY_S
    recent = NOW_TS - 2 * DAY_S
    for start in (old, recent):
        gpu_samples_ingest(
            node=node, batch=make_batch(points=5, start=start), live=False, now=NOW
        )  # history: older than the live window
    assert RawSample.objects.count() == 20
    if database_is_postgres():
        assert partition_name(old - old % DAY_S) in partitions()  # created on demand
    result = raw_samples_expire(now=NOW)
    assert sorted(RawSample.objects.values_list("ts", flat=True).distinct())[0] >= recent
    assert RawSample.objects.count() == 10
    if database_is_postgres():
        assert partition_name(old - old % DAY_S) in result["dropped"]
        names = partitions()
        for ahead in range(3):
            day = NOW_TS - NOW_TS % DAY_S + ahead * DAY_S
            assert partition_name(day) in names  # created ahead
    else:
        assert result["deleted"] == 10
    assert raw_samples_expire(now=NOW)["dropped"] == []  # idempotent


@pytest.mark.django_db
def test_expire_task_runs():
    assert isinstance(raw_samples_expire_task(), dict)


@pytest.mark.django_db(transaction=True)
def test_rows_of_days_without_partition_land_in_default_and_move_in_later():
    """ORM writers (tests, scripts) need not know about partitions."""
    from apps.fleet.models import Gpu
    from apps.telemetry.storage import DEFAULT_PARTITION, raw_partitions_ensure
    from tests.conftest import require

    require(database_is_postgres(), "this test needs PostgreSQL (set DATABASE_URL)")
    node, _ = node_with_token()
    gpu = Gpu.objects.create(uuid="GPU-orm", node=node, index=0, model_name="X")
    day = 20_000 * DAY_S  # 2024-10-04, surely without a partition
    RawSample.objects.bulk_create(
        [RawSample(gpu=gpu, ts=day + i * 10, util_pct=1) for i in range(3)]
    )
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {DEFAULT_PARTITION}")  # noqa: S608
        assert cursor.fetchone()[0] == 3
    ingest_caches_clear()
    assert raw_partitions_ensure(start_ts=day, end_ts=day) == [partition_name(day)]
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {DEFAULT_PARTITION}")  # noqa: S608
        assert cursor.fetchone()[0] == 0
        cursor.execute(f"SELECT count(*) FROM {partition_name(day)}")  # noqa: S608
        assert cursor.fetchone()[0] == 3
    assert RawSample.objects.filter(gpu=gpu).count() == 3
