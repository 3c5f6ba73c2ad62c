"""Samples stored while a rollup runs are never lost: a push that marks a bucket the rollup
has already claimed and read leaves it marked (a newer ``marked_at``), so the rollup's
release keeps the mark and the next run counts the push. PostgreSQL only: the push and the
rollup run on connections of their own, so these tests use a real, committed database."""

from __future__ import annotations

import datetime as dt
import threading

from django.db import connection

from apps.telemetry import rollups
from apps.telemetry.models import GpuRollup5m, RollupPending
from apps.telemetry.services import gpu_samples_ingest
from tests.telemetry.ingest_helpers import make_batch, node_with_token


def test_a_push_during_a_rollup_is_counted_by_the_next_one(
    settings, postgres_committed, monkeypatch
):
    settings.FLOPWATCH_ROLLUP_CONNECTIONS = 1
    now = dt.datetime.now(tz=dt.UTC).replace(microsecond=0)
    bucket = int(now.timestamp()) - 3600
    bucket -= bucket % 300
    node, _ = node_with_token()
    # The bucket's first half now, its second half pushed while the rollup runs.
    gpu_samples_ingest(node=node, batch=make_batch(gpus=1, points=15, start=bucket), now=now)
    (gpu_id,) = RollupPending.objects.values_list("gpu_id", flat=True).distinct()

    read_it = threading.Event()
    pushed = threading.Event()
    hourly = rollups._hourly_recompute

    def paused(*args, **kwargs):
        # The 5-minute rows are computed (the samples read) but not yet committed, and the
        # claimed marks not yet released.
        read_it.set()
        assert pushed.wait(30)
        return hourly(*args, **kwargs)

    monkeypatch.setattr(rollups, "_hourly_recompute", paused)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            rollups.rollups_run_pending(now=now)
        except BaseException as error:  # reported by the assertion after the join
            errors.append(error)
        finally:
            connection.close()

    worker = threading.Thread(target=run)
    worker.start()
    assert read_it.wait(30)
    second = make_batch(gpus=1, points=15, start=bucket + 150)
    second["batch_id"] = "b-second-half"
    gpu_samples_ingest(node=node, batch=second, now=now)
    pushed.set()
    worker.join(60)
    assert not worker.is_alive() and not errors
    # The rollup counted the first half only; the push's mark outlived its release.
    assert GpuRollup5m.objects.get(gpu_id=gpu_id, bucket=bucket).samples == 15
    assert RollupPending.objects.filter(gpu_id=gpu_id, bucket=bucket).exists()

    monkeypatch.setattr(rollups, "_hourly_recompute", hourly)
    rollups.rollups_run_pending(now=now)
    row = GpuRollup5m.objects.get(gpu_id=gpu_id, bucket=bucket)
    assert row.samples == 30
    assert row.covered_s == 300
