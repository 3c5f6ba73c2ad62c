"""Two workers detecting and sending at the same time, each with its own database
connection: every finding exists once and every notification is delivered exactly once."""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter

import pytest
from django.core import mail
from django.db import connection

from tests.conftest import database_is_postgres, require
from tests.waste.scenario import (
    END,
    T0,
    fleet_build,
    labelled_scenario,
    last_seen_set,
    rollups_build,
)


@pytest.fixture
def fleet(transactional_db, personas):
    from apps.waste.models import Policy

    require(database_is_postgres(), "concurrent workers need PostgreSQL (set DATABASE_URL)")

    Policy.objects.create(
        scope="project", project=personas.project_a2, low_efficiency_min_gpu_hours=10
    )
    scenario = labelled_scenario()
    built = fleet_build(scenario, personas)
    built.expected = scenario.expected
    return built


def _worker(now, barrier, errors):
    from apps.waste.services import notifications_send_due, waste_detect

    try:
        barrier.wait(timeout=30)
        waste_detect(now=now)
        notifications_send_due(now=now)
    except Exception as exc:  # reported by the test, not lost in the thread
        errors.append(exc)
    finally:
        connection.close()  # each thread had its own connection


def test_two_workers_send_every_notification_once(fleet, personas, webhook_server, settings):
    from apps.waste.models import Channel, Finding, Notification

    settings.FLOPWATCH_DIGEST_PERIOD = "hourly"
    server = webhook_server()
    Channel.objects.create(team=personas.team_a, url=server.url)
    Channel.objects.create(team=personas.team_b, url=server.url + "-b")
    errors: list[Exception] = []
    step = dt.timedelta(minutes=15)
    now = T0 + step
    while now <= END:
        # rollups arrive as time goes by; both workers then detect and send at once
        rollups_build(fleet, start_h=(now - step - T0) / dt.timedelta(hours=1),
                      end_h=(now - T0) / dt.timedelta(hours=1))  # fmt: skip
        last_seen_set(fleet, now=now)
        barrier = threading.Barrier(2)
        threads = [threading.Thread(target=_worker, args=(now, barrier, errors)) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors, errors
        now += step

    # one finding per rule and subject, as labelled
    rules = Counter(Finding.objects.values_list("rule", flat=True))
    assert rules == Counter(e["rule"] for e in fleet.expected)
    notifications = list(Notification.objects.all())
    assert notifications and all(n.state == "sent" for n in notifications)
    assert all(n.attempts == 1 for n in notifications)
    hooks = [n for n in notifications if n.channel == "webhook"]
    emails = [n for n in notifications if n.channel == "email"]
    # the webhook server saw exactly one post per webhook notification
    assert len(server.requests) == len(hooks) > 0
    texts = Counter(body["text"] for _, body in server.requests)
    assert max(texts.values()) == 1
    # and the mailbox one message per e-mail notification, no duplicates
    assert len(mail.outbox) == len(emails) > 0
    sent = Counter((tuple(m.to), m.subject) for m in mail.outbox)
    assert max(sent.values()) == 1
    kinds = Counter(n.kind for n in notifications)
    assert kinds["opened"] > 0 and kinds["digest"] > 0
