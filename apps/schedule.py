"""Every periodic task of flopwatch, in one place.

Fast periodic tasks expire, so a backlog (a worker down for an hour) does not queue the same
work sixty times: the next run does it all anyway, because every task is idempotent and works
out what is pending from the database.
"""

from celery.schedules import crontab

from apps.core.config import Env

MINUTE = 60

BEAT_SCHEDULE: dict[str, dict] = {}

# Waste detection walks the rollups forward from its cursors and queues notifications; the
# sender picks up retries whose backoff has passed.
BEAT_SCHEDULE["waste-detect"] = {
    "task": "apps.waste.tasks.waste_detect_task",
    "schedule": 5 * MINUTE,
    "options": {"expires": 5 * MINUTE},
}
BEAT_SCHEDULE["waste-notifications-send"] = {
    "task": "apps.waste.tasks.notifications_send_task",
    "schedule": MINUTE,
    "options": {"expires": MINUTE},
}

# Ingest: partitions for the coming days and retention of raw samples (hourly, so a missed
# run costs nothing; dropping a day partition is instant), stale allocations every minute.
BEAT_SCHEDULE["raw-samples-expire"] = {
    "task": "apps.telemetry.ingest_tasks.raw_samples_expire_task",
    "schedule": crontab(minute=17),
    "options": {"expires": 30 * MINUTE},
}
BEAT_SCHEDULE["allocations-close-stale"] = {
    "task": "apps.telemetry.ingest_tasks.allocations_close_stale_task",
    "schedule": MINUTE,
    "options": {"expires": MINUTE},
}

# Rollups: recompute pending buckets every minute (a run that finds another one holding the
# database lock returns at once); prune 5-minute and hourly rollups past retention daily.
BEAT_SCHEDULE["rollups-run-pending"] = {
    "task": "apps.telemetry.tasks.rollups_run_pending_task",
    "schedule": MINUTE,
    "options": {"expires": MINUTE},
}
BEAT_SCHEDULE["rollups-prune"] = {
    "task": "apps.telemetry.tasks.rollups_prune_task",
    "schedule": crontab(hour=3, minute=41),
    "options": {"expires": 60 * MINUTE},
}

# Import from Prometheus (dcgm-exporter) every FLOPWATCH_PROMETHEUS_INTERVAL_S. Read here from
# the environment (settings.py imports this module and takes the value from the schedule).
PROMETHEUS_INTERVAL_S = Env().int("FLOPWATCH_PROMETHEUS_INTERVAL_S", 300, minimum=10)
BEAT_SCHEDULE["prometheus-import"] = {
    "task": "apps.telemetry.prometheus_tasks.prometheus_import_task",
    "schedule": PROMETHEUS_INTERVAL_S,
    "options": {"expires": PROMETHEUS_INTERVAL_S},
}

__all__ = ["BEAT_SCHEDULE", "crontab"]
