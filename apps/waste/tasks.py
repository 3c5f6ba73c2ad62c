"""Celery tasks of the waste app: thin wrappers over the services, idempotent by design
(detection continues from its cursors; sending claims each notification once)."""

from celery import shared_task


@shared_task(name="apps.waste.tasks.waste_detect_task")
def waste_detect_task() -> dict:
    """Detect waste up to now and queue notifications, then send what is due."""
    from apps.waste.services import notifications_send_due, waste_detect

    summary = waste_detect().as_dict()
    summary["send"] = notifications_send_due().__dict__
    return summary


@shared_task(name="apps.waste.tasks.notifications_send_task")
def notifications_send_task() -> dict:
    """Send due notifications (retries with backoff come due here)."""
    from apps.waste.services import notifications_send_due

    return notifications_send_due().__dict__
