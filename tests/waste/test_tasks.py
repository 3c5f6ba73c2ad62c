"""The periodic task through a real Celery worker, and ``manage.py detect_waste``."""

from __future__ import annotations

import datetime as dt
import io

import pytest
from django.core.management import call_command

from tests.waste.scenario import END, fleet_build, labelled_scenario, last_seen_set, rollups_build


@pytest.mark.celery_worker
def test_detection_task_runs_on_a_real_worker(celery_worker, personas):
    from apps.waste.models import Finding
    from apps.waste.tasks import waste_detect_task

    built = fleet_build(labelled_scenario(), personas)
    rollups_build(built)
    last_seen_set(built, now=END)
    result = waste_detect_task.apply_async(queue=celery_worker.queue).get(timeout=60)
    # Weeks after the data: all of it is evaluated, and every GPU is silent by now.
    assert result["opened"] >= 4 and result["late"] >= 3
    assert Finding.objects.filter(rule="idle_allocation", allocation__external_id="slurm:1001")
    assert result["send"]["sent"] >= 1  # the owner of a1 heard about the open findings
    again = waste_detect_task.apply_async(queue=celery_worker.queue).get(timeout=60)
    assert again["opened"] == 0 and again["silent_opened"] == 0  # idempotent


def test_detect_waste_command_prints_a_summary(personas):
    from apps.waste.models import Finding

    built = fleet_build(labelled_scenario(), personas)
    rollups_build(built)
    last_seen_set(built, now=END + dt.timedelta(minutes=5))
    out = io.StringIO()
    call_command("detect_waste", "--now", "2026-11-02T06:05:00", "--no-send", stdout=out)
    text = out.getvalue()
    assert "detect_waste: 7 allocations" in text and "opened 4 (late 3)" in text
    assert Finding.objects.filter(rule="silent_gpu").count() == 1
    with pytest.raises(Exception, match="--now: expected an ISO-8601 time"):
        call_command("detect_waste", "--now", "yesterday")
