"""The Celery application. Configuration lives in settings under the ``CELERY_`` namespace."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "apps.settings")

app = Celery("flopwatch")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# Task modules not named tasks.py (one per part, so parts do not edit each other's files).
app.autodiscover_tasks(related_name="ingest_tasks")
app.autodiscover_tasks(related_name="prometheus_tasks")
