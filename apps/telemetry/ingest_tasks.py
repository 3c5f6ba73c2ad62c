"""Periodic work of the ingest side: raw sample retention and partitions ahead, and closing
allocations whose job stopped appearing. Scheduled in ``apps/schedule.py``."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="apps.telemetry.ingest_tasks.raw_samples_expire_task")
def raw_samples_expire_task() -> dict:
    """Create tomorrow's partitions and drop (or delete) raw samples past retention."""
    from apps.telemetry.storage import raw_samples_expire

    return raw_samples_expire()


@shared_task(name="apps.telemetry.ingest_tasks.allocations_close_stale_task")
def allocations_close_stale_task() -> int:
    """Close allocations not seen in samples for ``FLOPWATCH_ALLOCATION_GRACE_S``."""
    from apps.tenancy.services import allocations_close_stale

    return allocations_close_stale()
