"""What ``/healthz`` checks: the database and the Celery broker answer."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.db import connection


def database_check() -> str | None:
    """None when the database answers, else the error as text."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any driver error means "down" here
        return f"{type(exc).__name__}: {exc}"
    return None


def broker_check() -> str | None:
    """None when the broker answers, else the error as text."""
    if settings.REDIS_URL:
        import redis

        try:
            client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
            client.ping()
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None
    folder = Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"])
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"filesystem broker folder {folder} is not writable: {exc}"
    return None
