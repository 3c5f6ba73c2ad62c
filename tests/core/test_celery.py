"""A round trip through a real Celery worker on the real Redis broker (not eager mode)."""

import pytest
from django.contrib.auth import get_user_model

from apps.celery import app
from apps.core.tasks import ping

pytestmark = pytest.mark.celery_worker


def test_task_round_trip_through_real_worker(celery_worker):
    get_user_model().objects.create_user("someone")
    result = ping.apply_async(kwargs={"echo": "hello"}, queue=celery_worker.queue)
    # The worker answered and read the same database as the test.
    assert result.get(timeout=30) == {"echo": "hello", "users": 1}


def test_celery_is_configured_for_idempotent_tasks():
    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.task_time_limit and conf.task_soft_time_limit < conf.task_time_limit
    assert conf.worker_prefetch_multiplier == 1


def test_every_scheduled_task_exists_and_expires():
    import apps.schedule

    app.loader.import_default_modules()
    for name, entry in apps.schedule.BEAT_SCHEDULE.items():
        assert entry["task"] in app.tasks, f"{name}: unknown task {entry['task']}"
        assert entry.get("options", {}).get("expires"), f"{name}: periodic task must expire"
