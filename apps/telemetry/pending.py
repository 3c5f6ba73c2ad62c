"""Marking 5-minute buckets for the rollup to recompute.

Every writer of samples marks the buckets it touched in the same transaction as the samples
(so a crash loses neither), and every change to an allocation marks the span it changes.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import connection
from django.utils import timezone

from apps.telemetry.models import RollupPending

BUCKET_S = 300


def bucket_of(ts: int) -> int:
    return ts - ts % BUCKET_S


_MARK_BATCH = 500


def rollup_pending_mark(*, pairs: Iterable[tuple[int, int]]) -> None:
    """Mark (gpu_id, bucket) pairs; marking one twice is harmless.

    A bucket marked again gets a newer ``marked_at``, so a rollup that claimed it earlier can
    tell that samples arrived meanwhile and must leave the mark in place. Plain multi-row
    upserts rather than ``bulk_create``: every sample batch marks tens to hundreds of
    buckets, and Django's per-object preparation cost more than storing the samples.
    """
    rows = sorted(set(pairs))
    if not rows:
        return
    now = timezone.now()
    marked_at = now if connection.vendor == "postgresql" else now.isoformat(sep=" ")
    table = RollupPending._meta.db_table
    with connection.cursor() as cursor:
        for i in range(0, len(rows), _MARK_BATCH):
            chunk = rows[i : i + _MARK_BATCH]
            values = ", ".join(["(%s, %s, %s)"] * len(chunk))
            cursor.execute(
                f"INSERT INTO {table} (gpu_id, bucket, marked_at) VALUES {values} "  # noqa: S608
                "ON CONFLICT (gpu_id, bucket) DO UPDATE SET marked_at = excluded.marked_at",
                [v for gpu_id, bucket in chunk for v in (int(gpu_id), int(bucket), marked_at)],
            )


def rollup_pending_mark_range(*, gpu_ids: Iterable[int], start_ts: int, end_ts: int) -> None:
    """Mark every bucket from ``start_ts`` to ``end_ts`` (inclusive) of the given GPUs.

    One bucket past each end is marked too: a sample's time may spill across a boundary.
    """
    first = bucket_of(start_ts) - BUCKET_S
    last = bucket_of(end_ts) + BUCKET_S
    rollup_pending_mark(
        pairs=(
            (gpu_id, bucket)
            for gpu_id in gpu_ids
            for bucket in range(first, last + BUCKET_S, BUCKET_S)
        )
    )
