"""Periodic rollup work: recompute pending buckets every minute, prune old rollups daily.
Scheduled in ``apps/schedule.py``; both tasks are idempotent and safe to run concurrently
(the rollup holds a database lock, a second run returns at once with ``busy``)."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="apps.telemetry.tasks.rollups_run_pending_task")
def rollups_run_pending_task() -> dict:
    """Recompute every pending 5-minute bucket and the hours and days it touches."""
    from apps.telemetry.rollups import rollups_run_pending

    return rollups_run_pending()


@shared_task(name="apps.telemetry.tasks.rollups_prune_task")
def rollups_prune_task() -> dict:
    """Delete 5-minute and hourly rollups past their retention (daily rows stay forever)."""
    from apps.telemetry.rollups import rollups_prune

    return rollups_prune()
