"""The rollup in a real Celery worker: killed with SIGKILL in the middle of a run it leaves
consistent rows and pending marks, and the next run ends exactly where an uninterrupted one
does; and end to end from ``POST /api/v1/samples`` to the efficiency API."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
import uuid

import pytest

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
from apps.telemetry.pending import bucket_of, rollup_pending_mark
from apps.telemetry.rollups import rollups_run_pending
from tests.conftest import PASSWORD, database_is_postgres, require, start_celery_worker
from tests.telemetry.test_rollup_helpers import rounded_snapshot, snapshot


def _recent_world(base: int, *, hours: int = 2) -> None:
    """4 GPUs x ``hours`` of samples ending now-ish, two closed allocations."""
    from apps.fleet.models import Cluster, Gpu, Node
    from apps.telemetry.storage import raw_partitions_ensure, raw_partitions_forget
    from apps.tenancy.models import Allocation, AllocationGpu, Project, Team

    cluster = Cluster.objects.create(slug="kill", name="Kill")
    node = Node.objects.create(cluster=cluster, hostname="kill-1", sample_interval_s=10)
    gpus = [
        Gpu.objects.create(uuid=f"GPU-kill-{i}", node=node, index=i, model_name="NVIDIA H100")
        for i in range(4)
    ]
    team = Team.objects.create(slug="kt", name="KT")
    project = Project.objects.create(team=team, slug="kp", name="KP")
    raw_partitions_forget()
    raw_partitions_ensure(start_ts=base, end_ts=base + hours * 3600)
    rows = [
        RawSample(
            gpu=gpu,
            ts=base + o,
            util_pct=float((o // 10 * (i + 3)) % 101),
            mem_used_mib=4096.0 if o % 600 < 300 else 0.0,
        )
        for i, gpu in enumerate(gpus)
        for o in range(0, hours * 3600, 10)
    ]
    RawSample.objects.bulk_create(rows)
    rollup_pending_mark(pairs={(r.gpu_id, bucket_of(r.ts)) for r in rows})
    for n, (lo, hi) in enumerate(((123, 4567), (3000, 7100))):
        allocation = Allocation.objects.create(
            source="test",
            external_id=f"k{n}",
            project=project,
            start=dt.datetime.fromtimestamp(base + lo, tz=dt.UTC),
            end=dt.datetime.fromtimestamp(base + hi, tz=dt.UTC),
        )
        AllocationGpu.objects.bulk_create(
            [AllocationGpu(allocation=allocation, gpu=g) for g in gpus[n:]]
        )


def _run_until_done(now: dt.datetime) -> dict:
    """Run the rollup once the lock is free; its summary."""
    # A killed worker's transaction is rolled back when its connection closes; until the
    # server notices, the lock still looks held.
    deadline = time.monotonic() + 30
    while (summary := rollups_run_pending(now=now)).get("busy"):
        assert time.monotonic() < deadline, "rollup lock never released"
        time.sleep(0.1)
    return summary


def _kill_mid_run(*, tmp_path, extra_env: dict) -> None:
    """Start the rollup task in a real worker and SIGKILL it once some of the work has
    committed and some is still pending."""
    from apps.celery import app
    from apps.telemetry.tasks import rollups_run_pending_task

    total = RollupPending.objects.count()
    queue = f"test-rollup-{uuid.uuid4().hex[:8]}"
    worker = start_celery_worker(queue=queue, log_path=tmp_path / "worker.log", extra_env=extra_env)
    killed_at = None
    try:
        rollups_run_pending_task.apply_async(queue=queue)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and worker.poll() is None:
            left = RollupPending.objects.count()
            if 0 < left < total - 3:
                os.kill(worker.pid, signal.SIGKILL)
                killed_at = left
                break
            time.sleep(0.01)
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.wait()
        app.control.purge()
    require(killed_at is not None, f"the worker never got going:\n{_log(tmp_path)}")
    left = RollupPending.objects.count()
    assert 0 < left < total  # part done and committed, the rest still pending


def _from_scratch(now: dt.datetime) -> dict:
    """Every rollup row gone, every sample's bucket marked again, and one uninterrupted run;
    its summary."""
    for model in (GpuRollup5m, AllocationGpuHourly, UsageHourly, UsageDaily, CapacityDaily):
        model.objects.all().delete()
    rollup_pending_mark(
        pairs={(g, bucket_of(ts)) for g, ts in RawSample.objects.values_list("gpu_id", "ts")}
    )
    return _run_until_done(now)


def test_worker_killed_mid_run_then_next_run_equals_an_uninterrupted_one(
    transactional_db, redis_url, tmp_path
):
    now = dt.datetime.now(tz=dt.UTC).replace(microsecond=0)
    base = int(now.timestamp()) - 3 * 3600
    base -= base % 300
    _recent_world(base)
    # One bucket per transaction, so the run is long enough to be caught in the middle.
    _kill_mid_run(tmp_path=tmp_path, extra_env={"FLOPWATCH_ROLLUP_CHUNK": "1"})
    _run_until_done(now)
    assert RollupPending.objects.count() == 0
    interrupted = snapshot()

    _from_scratch(now)
    assert snapshot() == interrupted
    assert interrupted["hourly"] and interrupted["5m"]


def test_worker_killed_mid_split_run_then_next_run_equals_an_uninterrupted_one(
    transactional_db, redis_url, tmp_path, settings
):
    """The same with the work split by time over two connections, each part committing on
    its own: the kill lands between parts' commits, before the coordinator has rewritten
    the days and released the marks near the cuts."""
    require(database_is_postgres(), "a split rollup needs PostgreSQL (set DATABASE_URL)")
    split = {
        "FLOPWATCH_ROLLUP_CONNECTIONS": "2",
        "FLOPWATCH_ROLLUP_SPLIT_MIN_BUCKETS": "2",
        # About three hours of the four GPUs' marks per chunk, each split in two parts.
        "FLOPWATCH_ROLLUP_CHUNK": "150",
    }
    for name, value in split.items():
        setattr(settings, name, int(value))
    now = dt.datetime.now(tz=dt.UTC).replace(microsecond=0)
    base = int(now.timestamp()) - 13 * 3600
    base -= base % 300
    _recent_world(base, hours=12)
    _kill_mid_run(tmp_path=tmp_path, extra_env=split)
    _run_until_done(now)
    assert not RollupPending.objects.exists()
    assert not RollupPendingDay.objects.exists()
    interrupted = rounded_snapshot()

    summary = _from_scratch(now)
    assert summary["parts"] == 2 and summary["chunks"] >= 2
    # Other chunks and cuts add the same numbers in another order: 12 significant digits.
    assert rounded_snapshot() == interrupted
    assert interrupted["hourly"] and interrupted["5m"] and interrupted["usage"]


def _log(tmp_path) -> str:
    path = tmp_path / "worker.log"
    return path.read_text(errors="replace") if path.exists() else ""


def test_end_to_end_from_ingest_api_through_worker_to_efficiency_api(celery_worker, client):
    from apps.telemetry.services import ingest_caches_clear
    from apps.telemetry.tasks import rollups_run_pending_task
    from apps.tenancy.selectors import projects_visible_to  # noqa: F401 (the API's filter)
    from tests.telemetry.ingest_helpers import make_batch, node_with_token, post

    ingest_caches_clear()
    now = int(time.time())
    start = now - 3600
    start -= start % 300
    _, token = node_with_token(hostname="e2e-node")
    batch = make_batch(node="e2e-node", gpus=2, points=30, start=start, util=50.0)
    response = post(client, token, batch)
    assert response.status_code == 202, response.content
    assert response.json() == {"accepted": 60, "duplicates": 0}
    assert RollupPending.objects.exists()

    result = rollups_run_pending_task.apply_async(queue=celery_worker.queue).get(timeout=120)
    assert result["buckets"] >= 2
    assert not RollupPending.objects.exists()
    rows = GpuRollup5m.objects.filter(bucket=start).order_by("gpu__uuid")
    assert [(r.samples, r.covered_s, r.activity_source) for r in rows] == [
        (30, 300, "sm_active"),
        (30, 300, "sm_active"),
    ]
    # Each GPU: 29 samples x 10 s + the last one's 20 s, all inside the job's span.
    hourly = AllocationGpuHourly.objects.all()
    assert sum(h.observed_s for h in hourly) == 2 * 310
    assert sum(h.busy_s for h in hourly) == pytest.approx(310.0)

    from django.contrib.auth import get_user_model

    get_user_model().objects.create_superuser("root", "root@example.com", PASSWORD)
    client.login(username="root", password=PASSWORD)
    body = client.get(
        "/api/v1/efficiency",
        {
            "group": "project",
            "start": dt.datetime.fromtimestamp(start - 3600, tz=dt.UTC).isoformat(),
            "end": dt.datetime.fromtimestamp(now + 3600, tz=dt.UTC).isoformat(),
        },
    ).json()
    assert [row["key"] for row in body] == ["llm-pretrain"]
    assert body[0]["observed_gpu_hours"] == pytest.approx(620 / 3600, abs=1e-6)
    assert body[0]["efficiency"] == 0.5
