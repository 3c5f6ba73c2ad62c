"""Idempotency (replays, overlapping batches) and a database that fails mid-request."""

from __future__ import annotations

import time

import pytest
from django.db import connection

from apps.fleet.models import Gpu, Node
from apps.telemetry.models import RawSample, RollupPending
from apps.telemetry.services import gpu_samples_ingest, ingest_caches_clear
from apps.tenancy.models import Allocation
from tests.conftest import database_is_postgres, require
from tests.telemetry.ingest_helpers import make_batch, node_with_token, post


@pytest.fixture(autouse=True)
def _fresh_caches():
    ingest_caches_clear()
    yield
    ingest_caches_clear()


def rows() -> list[tuple]:
    return list(
        RawSample.objects.order_by("gpu_id", "ts").values_list(
            "gpu_id", "ts", "util_pct", "power_w"
        )
    )


@pytest.mark.django_db
def test_replaying_a_batch_ten_times_changes_nothing(client):
    _node, token = node_with_token()
    batch = make_batch(points=10, gpus=3)
    first = post(client, token, batch, gzip_it=True)
    assert first.json() == {"accepted": 30, "duplicates": 0}
    snapshot = rows()
    allocations = list(Allocation.objects.values_list("pk", "start", "end"))
    for _ in range(10):
        r = post(client, token, batch, gzip_it=True)
        assert r.status_code == 202
        assert r.json() == {"accepted": 0, "duplicates": 30}
    assert rows() == snapshot
    assert list(Allocation.objects.values_list("pk", "start", "end")) == allocations


@pytest.mark.django_db
def test_overlapping_batches_first_value_wins(client):
    _node, token = node_with_token()
    start = int(time.time()) - 1000
    a = make_batch(points=10, gpus=2, start=start, util=10.0)
    b = make_batch(points=10, gpus=2, start=start + 50, util=90.0)  # 5 of 10 overlap
    assert post(client, token, a).json() == {"accepted": 20, "duplicates": 0}
    assert post(client, token, b).json() == {"accepted": 10, "duplicates": 10}
    stored = rows()
    assert len(stored) == 30
    by_ts = {(g, ts): util for g, ts, util, _ in stored}
    gpu = stored[0][0]
    assert by_ts[(gpu, start + 50)] == 10.0  # overlap: a's value
    assert by_ts[(gpu, start + 140)] == 90.0  # only in b
    # The other order of arrival gives the same set of keys.
    ingest_caches_clear()
    RawSample.objects.all().delete()
    post(client, token, b)
    post(client, token, a)
    assert {(g, ts) for g, ts, *_ in rows()} == {(g, ts) for g, ts, *_ in stored}


@pytest.mark.django_db
def test_same_gpu_and_timestamp_twice_in_one_batch_counts_a_duplicate():
    node, _token = node_with_token()
    now = int(time.time())
    batch = make_batch(points=3, gpus=1, start=now - 100, job="slurm:1")
    other = make_batch(points=3, gpus=1, start=now - 80, job="slurm:2", util=99.0)
    batch["series"].append(other["series"][0])  # ts overlap at now-80
    result = gpu_samples_ingest(node=node, batch=batch)
    assert (result.accepted, result.duplicates) == (5, 1)
    assert RawSample.objects.get(ts=now - 80).util_pct == 50.0  # the first entry's value


KILL_FUNCTION = """
CREATE OR REPLACE FUNCTION flopwatch_test_kill_self() RETURNS trigger AS $$
BEGIN
    PERFORM pg_terminate_backend(pg_backend_pid());
    PERFORM pg_sleep(5);
    RETURN NULL;
END $$ LANGUAGE plpgsql;
"""


@pytest.mark.django_db(transaction=True)
def test_database_dies_mid_request_503_and_nothing_partial(client):
    """The connection is killed by PostgreSQL while the raw rows are being inserted, after the
    GPUs, node and allocations were written in the same transaction: 503, nothing kept."""
    require(database_is_postgres(), "this test needs PostgreSQL (set DATABASE_URL)")
    _node, token = node_with_token()
    with connection.cursor() as cursor:
        cursor.execute(KILL_FUNCTION)
        cursor.execute(
            "CREATE TRIGGER flopwatch_test_kill BEFORE INSERT ON telemetry_rawsample "
            "FOR EACH STATEMENT EXECUTE FUNCTION flopwatch_test_kill_self()"
        )
    try:
        r = post(client, token, make_batch(points=5, gpus=2), gzip_it=True)
        assert r.status_code == 503, r.content
        assert int(r["Retry-After"]) > 0
    finally:
        connection.close()  # the killed connection; the next query opens a fresh one
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER IF EXISTS flopwatch_test_kill ON telemetry_rawsample")
            cursor.execute("DROP FUNCTION IF EXISTS flopwatch_test_kill_self()")
    assert not RawSample.objects.exists()
    assert not RollupPending.objects.exists()
    assert not Gpu.objects.exists()
    assert not Allocation.objects.exists()
    assert Node.objects.get().last_seen_at is None
    # Once the database is back, the agent's retry goes through.
    ingest_caches_clear()
    r = post(client, token, make_batch(points=5, gpus=2), gzip_it=True)
    assert r.status_code == 202
    assert r.json()["accepted"] == 10


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_of_the_same_batch_store_each_sample_once():
    """Two requests carrying the same samples at the same moment (an agent retrying while
    its first attempt is still in flight): every sample stored once, both answered."""
    import threading

    from django.db import connections

    node, _ = node_with_token()
    start = int(time.time()) - 3000
    gpu_samples_ingest(node=node, batch=make_batch(points=1, gpus=2, start=start - 600))
    results: list = []
    errors: list = []

    def push(batch, barrier):
        try:
            barrier.wait()
            results.append(gpu_samples_ingest(node=node, batch=batch))
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()

    for round_ in range(6):
        batch = make_batch(points=50, gpus=2, start=start + round_ * 500)
        barrier = threading.Barrier(2)
        threads = [threading.Thread(target=push, args=(batch, barrier)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    assert sum(r.accepted for r in results) == 6 * 100
    assert sum(r.accepted + r.duplicates for r in results) == 2 * 6 * 100
    assert RawSample.objects.filter(ts__gte=start).count() == 6 * 100
