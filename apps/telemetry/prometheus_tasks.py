"""Periodic import from the clusters' Prometheus servers (dcgm-exporter series). Scheduled in
``apps/schedule.py``; idempotent: it resumes from each cluster's watermark and re-imported
samples are duplicates that change nothing."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="apps.telemetry.prometheus_tasks.prometheus_import_task")
def prometheus_import_task() -> dict:
    """Import what is new in every configured Prometheus; a summary per cluster slug."""
    from apps.telemetry.prometheus import prometheus_import_all

    return prometheus_import_all()
