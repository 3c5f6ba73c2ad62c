# ruff: noqa: S608 -- the SQL interpolates only a constant column list.
"""Migration 0007 re-keys GpuRollup5m by (gpu, bucket) by hand (Django does not migrate a
table to a composite key): the rows survive both ways, and the new key still refuses a
second row for the same GPU and bucket."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("telemetry", "0006_gpurollup5m_gpu_no_constraint")]
AFTER = [("telemetry", "0007_gpurollup5m_composite_pk")]
COLUMNS = (
    "gpu_id, bucket, samples, covered_s, missing_s, allocated_s, busy_s, idle_s, "
    "mem_held_idle_s, util_mean, activity_source"
)


def _migrate(targets) -> None:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)


def _latest():
    return MigrationExecutor(connection).loader.graph.leaf_nodes()


def _rows() -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {COLUMNS} FROM telemetry_gpurollup5m ORDER BY gpu_id, bucket")
        return [tuple(row) for row in cursor.fetchall()]


def _insert(gpu_id: int, bucket: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO telemetry_gpurollup5m ({COLUMNS}, mem_used_max_mib) "
            "VALUES (%s, %s, 30, 300, 0, 300, 150.5, 10, 0, 50.0, 'util', NULL)",
            [gpu_id, bucket],
        )


def test_rows_survive_the_new_key_both_ways():
    from apps.fleet.models import Cluster, Gpu, Node

    node = Node.objects.create(cluster=Cluster.objects.create(slug="c", name="C"), hostname="n")
    gpus = [Gpu.objects.create(uuid=f"GPU-{i}", node=node, index=i) for i in range(2)]
    try:
        _migrate(BEFORE)
        for gpu in gpus:
            for bucket in (0, 300, 600):
                _insert(gpu.id, bucket)
        before = _rows()
        assert len(before) == 6

        _migrate(AFTER)
        assert _rows() == before
        with pytest.raises(IntegrityError), transaction.atomic():
            _insert(gpus[0].id, 300)

        _migrate(BEFORE)
        assert _rows() == before
        with pytest.raises(IntegrityError), transaction.atomic():
            _insert(gpus[1].id, 600)
    finally:
        _migrate(_latest())
    assert _rows() == before
