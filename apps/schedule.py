"""Every periodic task of flopwatch, in one place.

Fast periodic tasks expire, so a backlog (a worker down for an hour) does not queue the same
work sixty times: the next run does it all anyway, because every task is idempotent and works
out what is pending from the database.
"""

from celery.schedules import crontab

MINUTE = 60

BEAT_SCHEDULE: dict[str, dict] = {}

__all__ = ["BEAT_SCHEDULE", "crontab"]
