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


def test_demo_transport_round_trip_in_a_fresh_var_dir(tmp_path):
    """``make demo`` runs without Redis: Celery's filesystem transport under a var/ folder
    that a fresh clone does not have yet (the worker must not stop on its missing folders)."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env["FLOPWATCH_VAR_DIR"] = str(tmp_path / "var")
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True, timeout=120
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "apps", "worker", "--pool", "solo",
         "--loglevel", "WARNING", "--without-heartbeat", "--without-gossip", "--without-mingle"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        sender = subprocess.run(
            [sys.executable, "-c",
             "import django; django.setup(); from apps.core.tasks import ping; "
             "print(ping.delay(echo='fs').get(timeout=60))"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=90,
        )  # fmt: skip
        assert sender.returncode == 0, sender.stderr
        assert "'echo': 'fs'" in sender.stdout
        assert worker.poll() is None, "the worker stopped"
    finally:
        worker.terminate()
        out, _ = worker.communicate(timeout=30)
    assert "Unrecoverable error" not in out
    assert not (ROOT / "control").exists(), "exchange tables belong under the var dir"
    assert (tmp_path / "var" / "celery" / "control").is_dir()
