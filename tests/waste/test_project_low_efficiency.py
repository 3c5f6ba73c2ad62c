"""The project-level ``low_efficiency``: a project whose jobs, pooled, are <= 25 % efficient
over the trailing window with >= 50 GPU-hours, although no job alone reaches 50 GPU-hours.

The fleet: six jobs of project a1, two GPUs each, every GPU at 20 % activity holding 30 GB
(neither idle nor oversized), six hours of data. Each job has 12 GPU-hours, far under the
allocation rule's floor; the project has 12 GPU-hours per hour: 48 after four hours (under 50),
60 after five, so the project finding opens at the end of hour 5.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from tests.waste.scenario import (
    DATA_END_H,
    END,
    LOW_EFF,
    RATE,
    T0,
    GpuSpec,
    JobSpec,
    Scenario,
    between,
    fleet_build,
    h,
    last_seen_set,
    rollups_build,
)

FIVE_MIN = dt.timedelta(minutes=5)
LAST = END + FIVE_MIN  # data runs one bucket past END, so END is complete at LAST
BUSY = (0.8, 40_000.0)
JOBS, GPUS_PER_JOB = 6, 2
GPUS = JOBS * GPUS_PER_JOB


def _scenario(plan=lambda t: LOW_EFF) -> Scenario:
    gpus = [GpuSpec(f"p{j}", i, plan) for j in range(JOBS) for i in range(GPUS_PER_JOB)]
    jobs = [
        JobSpec(f"slurm:2{j:03d}", "a1", [(f"p{j}", i) for i in range(GPUS_PER_JOB)])
        for j in range(JOBS)
    ]
    return Scenario(gpus, jobs)


@pytest.fixture
def fleet(personas):
    from apps.waste.models import Channel

    Channel.objects.create(team=personas.team_a, url="http://127.0.0.1:9/hooks/team-a")
    return fleet_build(_scenario(), personas)


def _bulk(built, *, now=LAST):
    from apps.waste.services import waste_detect

    rollups_build(built)
    last_seen_set(built, now=now)
    return waste_detect(now=now)


def _live(built, *, step=FIVE_MIN):
    """Rollups arrive bucket by bucket and detection runs every ``step`` (time travel)."""
    from apps.waste.services import waste_detect

    done, now = T0, T0 + step
    while now <= LAST:
        rollups_build(built, start_h=_hours(done), end_h=_hours(now))
        last_seen_set(built, now=now)
        waste_detect(now=now)
        done, now = now, now + step


def _hours(moment: dt.datetime) -> float:
    return (moment - T0).total_seconds() / 3600


def _project_findings():
    from apps.waste.models import Finding

    return list(Finding.objects.filter(subject__startswith="project:").order_by("id"))


def _snapshot():
    from apps.waste.models import Finding, FindingEvent, Notification, ProjectDetectionCursor

    # Project findings only: minutes later the GPUs would be silent (another rule).
    project = {"subject__startswith": "project:"}
    return (
        list(Finding.objects.filter(**project).order_by("id").values()),
        list(
            FindingEvent.objects.filter(**{f"finding__{k}": v for k, v in project.items()})
            .order_by("id")
            .values_list("finding_id", "kind")
        ),
        sorted(
            Notification.objects.filter(finding__subject__startswith="project:").values_list(
                "key", flat=True
            )
        ),
        list(ProjectDetectionCursor.objects.values_list("project_id", "next_hour", "state")),
    )


def _cost(gpu_hours: float) -> Decimal:
    return (RATE * Decimal(str(gpu_hours))).quantize(Decimal("0.01"))


def test_fires_for_a_low_project_of_small_jobs_once_and_is_idempotent(fleet, personas):
    from apps.waste.models import Finding, Notification

    summary = _bulk(fleet)
    assert summary.projects >= 1
    # No job alone reaches 50 GPU-hours: the allocation rule stays quiet...
    assert not Finding.objects.filter(rule="low_efficiency", allocation__isnull=False).exists()
    # ...the project, pooled, does not.
    [finding] = _project_findings()
    assert finding.rule == "low_efficiency"
    assert finding.allocation is None and finding.project == personas.project_a1
    assert finding.subject == f"project:{personas.project_a1.id}"
    assert list(finding.gpus.all()) == []
    assert (finding.started, finding.ended, finding.status) == (h(5), None, "open")
    assert finding.last_seen == h(6)
    # The window's unused time when it opened (80 % of 60 GPU-h), then 80 % of the next hour.
    hours = 0.8 * 60 + 0.8 * GPUS
    assert finding.wasted_gpu_hours == pytest.approx(hours)
    assert finding.wasted_cost == _cost(hours)
    assert finding.detail["efficiency"] == pytest.approx(0.2)
    assert finding.detail["window_gpu_hours"] == pytest.approx(72)
    assert finding.detail["scope"] == "project"
    assert finding.detected_late is False and finding.severity == "critical"
    # Announced once, like any finding: the owner by e-mail, the team's webhook.
    opened = Notification.objects.filter(finding=finding, kind="opened")
    assert sorted(opened.values_list("channel", "recipient")) == [
        ("email", "owner@example.com"),
        ("webhook", "http://127.0.0.1:9/hooks/team-a"),
    ]
    # Running detection again, now or later in the same hour, changes nothing.
    before = _snapshot()
    from apps.waste.services import waste_detect

    waste_detect(now=LAST)
    waste_detect(now=LAST + 2 * FIVE_MIN)
    assert _snapshot() == before


def test_live_detection_gives_the_same_project_finding_as_bulk(fleet):
    from apps.waste.models import Notification

    _live(fleet)
    [finding] = _project_findings()
    # flagged within one detection period after the hour that completes the window
    assert h(5) < finding.detected_at <= h(5) + FIVE_MIN
    assert (finding.started, finding.ended, finding.status) == (h(5), None, "open")
    hours = 0.8 * 60 + 0.8 * GPUS
    assert finding.wasted_gpu_hours == pytest.approx(hours)
    assert finding.wasted_cost == _cost(hours)
    assert Notification.objects.filter(finding=finding, kind="opened").count() == 2


@pytest.mark.parametrize(
    "policy",
    [
        {"low_efficiency_min_gpu_hours": 73},  # the project has 72 GPU-hours by the end
        {"low_efficiency_pct": 15},  # 20 % is above a 15 % floor
        {"low_efficiency_enabled": False},  # switched off
    ],
    ids=["under-min-gpu-hours", "above-pct", "disabled"],
)
def test_does_not_fire(fleet, personas, policy):
    from apps.waste.models import Policy

    Policy.objects.create(scope="project", project=personas.project_a1, **policy)
    _bulk(fleet)
    assert _project_findings() == []


@pytest.mark.parametrize(("project_enabled", "fires"), [(None, False), (True, True)])
def test_team_policy_switches_it_off_unless_the_project_switches_it_on(
    fleet, personas, project_enabled, fires
):
    from apps.waste.models import Policy

    Policy.objects.create(scope="team", team=personas.team_a, low_efficiency_enabled=False)
    Policy.objects.create(
        scope="project", project=personas.project_a1, low_efficiency_enabled=project_enabled
    )
    _bulk(fleet)
    assert len(_project_findings()) == (1 if fires else 0)


def test_min_gpu_hours_is_reached_across_jobs_not_by_any_one(fleet):
    """Four hours in, the project has 48 GPU-hours: nothing yet."""
    from apps.waste.services import waste_detect

    rollups_build(fleet, end_h=4 + 5 / 60)
    last_seen_set(fleet, now=h(4) + FIVE_MIN)
    waste_detect(now=h(4) + FIVE_MIN)
    assert _project_findings() == []


def test_resolves_when_efficiency_recovers(personas):
    """Five hours at 20 %, then everyone works at 80 %: the window is at 30 % after hour 6."""
    from apps.waste.models import Notification

    built = fleet_build(_scenario(between(0, 5, LOW_EFF, BUSY)), personas)
    _live(built)
    [finding] = _project_findings()
    assert (finding.started, finding.ended, finding.status) == (h(5), h(5), "resolved")
    assert list(finding.events.values_list("kind", flat=True)) == ["opened", "cleared"]
    assert finding.wasted_gpu_hours == pytest.approx(0.8 * 60)  # nothing added after it cleared
    assert finding.detail["efficiency"] == pytest.approx(0.2)
    # It was live when it opened: the owner heard about it, once.
    assert Notification.objects.filter(finding=finding, kind="opened", channel="email").count() == 1


def test_resolved_stretch_found_in_bulk_goes_to_the_digest_only(personas):
    from apps.waste.models import Notification

    built = fleet_build(_scenario(between(0, 5, LOW_EFF, BUSY)), personas)
    _bulk(built)
    [finding] = _project_findings()
    assert (finding.status, finding.ended, finding.detected_late) == ("resolved", h(5), True)
    assert not Notification.objects.filter(finding=finding).exists()


def test_an_hour_without_any_job_pauses_the_finding(personas):
    """The jobs end at 6h and the project uses no GPU in hour 6: the finding stays open (its
    window is still low) but neither grows nor moves its last-seen time."""
    from apps.tenancy.models import Allocation
    from apps.waste.services import waste_detect

    built = fleet_build(_scenario(), personas)
    Allocation.objects.update(end=h(6))
    rollups_build(built, end_h=DATA_END_H)
    now = h(7) + FIVE_MIN
    last_seen_set(built, now=now)
    waste_detect(now=now)
    [finding] = _project_findings()
    assert finding.status == "open"
    assert finding.last_seen == h(6)  # hour 6 (no job) was evaluated, a pause
    assert finding.wasted_gpu_hours == pytest.approx(0.8 * 60 + 0.8 * GPUS)
    from apps.waste.models import ProjectDetectionCursor

    assert ProjectDetectionCursor.objects.get().next_hour == int(h(7).timestamp())


def _login(client, user):
    client.force_login(user)


def test_pages_and_api_show_a_project_finding(fleet, personas, client):
    from apps.waste.messages import finding_context, webhook_payload

    _bulk(fleet)
    [finding] = _project_findings()
    _login(client, personas.owner)
    page = client.get("/findings/")
    assert page.status_code == 200
    html = page.content.decode()
    assert f'id="finding-{finding.pk}"' in html
    assert 'href="/projects/a1/">whole project</a>' in html
    detail = client.get(f"/findings/{finding.pk}/")
    assert detail.status_code == 200
    html = detail.content.decode()
    assert 'href="/projects/a1/"' in html
    assert "all jobs of the project, pooled" in html
    assert "20 % over the last 7 days" in html
    api = client.get("/api/v1/findings?status=open&type=low_efficiency")
    assert api.status_code == 200
    [row] = [r for r in api.json() if r["id"] == finding.pk]
    assert (row["project"], row["allocation"], row["gpus"]) == ("a1", None, [])
    # What the e-mail and the webhook say: the project as a whole, with its numbers.
    context = finding_context(finding=finding, user=personas.owner)
    assert context["headline"] == "Low efficiency: all jobs in Project A1"
    assert context["explained"].startswith("20 % efficient over the last 7 days (72.0 GPU-hours)")
    assert "project as a whole" in context["explained"]
    assert "all jobs in Project A1" in webhook_payload(context=context)["text"]
    # The link action page works without an allocation too.
    from apps.waste.links import action_token_make

    token = action_token_make(finding_id=finding.pk, user_id=personas.owner.pk, action="snooze")
    assert client.get(f"/findings/act/{token}/").status_code == 200


@pytest.mark.parametrize(("window_days", "status"), [(1, "resolved"), (7, "open")])
def test_window_slides_past_the_waste_and_the_finding_resolves(personas, window_days, status):
    """The jobs end at 6h. With a one-day window the low hours slide out: from the hour ending
    at 26h the window holds 48 GPU-hours (< 50) and the finding ends where it last grew; with
    seven days it is still low (and stays open, without growing)."""
    from apps.tenancy.models import Allocation
    from apps.waste.models import Policy
    from apps.waste.services import waste_detect

    Policy.objects.create(
        scope="project", project=personas.project_a1, low_efficiency_window_days=window_days
    )
    built = fleet_build(_scenario(), personas)
    Allocation.objects.update(end=h(6))
    rollups_build(built, end_h=DATA_END_H)
    last_seen_set(built, now=h(24) + FIVE_MIN)
    waste_detect(now=h(24) + FIVE_MIN)
    [finding] = _project_findings()
    assert finding.status == "open"  # a day later the one-day window still has 60 GPU-h
    now = h(30) + FIVE_MIN
    last_seen_set(built, now=now)
    waste_detect(now=now)
    finding.refresh_from_db()
    assert finding.status == status
    assert finding.last_seen == h(6)
    assert finding.ended == (h(6) if status == "resolved" else None)
    assert finding.wasted_gpu_hours == pytest.approx(0.8 * 60 + 0.8 * GPUS)


def test_two_detectors_at_once_open_one_project_finding(transactional_db, personas):
    """Two workers, each with its own connection, walk the same project at the same moment:
    the project cursor is locked, so the finding is opened and announced once."""
    import threading

    from django.db import connection

    from apps.waste.models import Channel, Notification
    from apps.waste.services import waste_detect
    from tests.conftest import database_is_postgres, require

    require(database_is_postgres(), "concurrent workers need PostgreSQL (set DATABASE_URL)")
    Channel.objects.create(team=personas.team_a, url="http://127.0.0.1:9/hooks/team-a")
    built = fleet_build(_scenario(), personas)
    rollups_build(built)
    last_seen_set(built, now=LAST)
    barrier, errors = threading.Barrier(2), []

    def worker():
        try:
            barrier.wait(timeout=30)
            waste_detect(now=LAST)
        except Exception as exc:  # reported by the test, not lost in the thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    [finding] = _project_findings()
    assert finding.started == h(5)
    assert Notification.objects.filter(finding=finding, kind="opened").count() == 2
