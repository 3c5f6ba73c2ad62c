"""Marking 5-minute buckets for the rollup to recompute.

Every writer of samples marks the buckets it touched in the same transaction as the samples
(so a crash loses neither), and every change to an allocation marks the span it changes.
"""

from __future__ import annotations

from collections.abc import Iterable

from apps.telemetry.models import RollupPending

BUCKET_S = 300


def bucket_of(ts: int) -> int:
    return ts - ts % BUCKET_S


def rollup_pending_mark(*, pairs: Iterable[tuple[int, int]]) -> None:
    """Mark (gpu_id, bucket) pairs; marking one twice is harmless."""
    rows = [RollupPending(gpu_id=gpu_id, bucket=bucket) for gpu_id, bucket in set(pairs)]
    RollupPending.objects.bulk_create(rows, ignore_conflicts=True, batch_size=2000)


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
