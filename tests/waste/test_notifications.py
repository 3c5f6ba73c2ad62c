"""E-mails, reminders, the digest, opt-out and the webhook against a real HTTP server."""

from __future__ import annotations

import datetime as dt

from django.core import mail

from tests.waste.scenario import h


def _send(now):
    from apps.waste.services import notifications_send_due

    return notifications_send_due(now=now)


def test_owner_email_has_text_and_html_with_numbers_job_gpus_and_links(make_finding, settings):
    from apps.waste.models import Notification
    from apps.waste.services import finding_opened_notify

    settings.FLOPWATCH_BASE_URL = "https://fw.example.org"
    finding = make_finding()
    assert finding_opened_notify(finding=finding, now=h(2)) == 1
    assert finding_opened_notify(finding=finding, now=h(2)) == 0  # keyed: never twice
    summary = _send(h(2))
    assert summary.sent == 1
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["owner@example.com"]
    html = message.alternatives[0][0]
    for part in (message.body, html):
        assert "slurm:9001" in part
        assert "fnode/1" in part
        assert "4.00 USD" in part
        assert "2.0 GPU-hours" in part
        assert f"https://fw.example.org/findings/{finding.pk}/" in part
        assert "https://fw.example.org/findings/act/" in part
    assert message.alternatives[0][1] == "text/html"
    assert Notification.objects.get().state == "sent"
    assert _send(h(3)).sent == 0  # sent once, never again


def test_reminder_every_24h_while_open_and_unacknowledged(make_finding, personas):
    from apps.waste.services import finding_acknowledge, reminders_enqueue

    finding = make_finding()
    assert reminders_enqueue(now=h(2) + dt.timedelta(hours=23)) == 0
    assert reminders_enqueue(now=h(2) + dt.timedelta(hours=24, minutes=5)) == 1
    assert reminders_enqueue(now=h(2) + dt.timedelta(hours=30)) == 0  # same day: same key
    assert _send(h(27)).sent == 1
    assert mail.outbox[0].subject.startswith("Reminder: ")
    finding_acknowledge(finding=finding, user=personas.owner, comment="known, fixing")
    assert reminders_enqueue(now=h(2) + dt.timedelta(hours=49)) == 0


def test_reminder_queued_then_acknowledged_is_not_sent(make_finding, personas):
    from apps.waste.models import Notification
    from apps.waste.services import finding_acknowledge, reminders_enqueue

    finding = make_finding()
    reminders_enqueue(now=h(27))
    finding_acknowledge(finding=finding, user=personas.owner)
    summary = _send(h(27))
    assert summary.skipped == 1 and summary.sent == 0
    assert not mail.outbox
    assert "acknowledged" in Notification.objects.get().last_error


def test_opt_out(make_finding, personas):
    from apps.waste.models import NotificationPreference
    from apps.waste.services import digest_enqueue, finding_opened_notify

    NotificationPreference.objects.create(user=personas.owner, email_opt_out=True)
    NotificationPreference.objects.create(user=personas.admin, email_opt_out=True)
    finding = make_finding()
    assert finding_opened_notify(finding=finding, now=h(2)) == 0
    assert digest_enqueue(now=h(24 * 2)) == 0


def test_admin_digest_lists_open_and_late_findings_with_total(make_finding, personas, settings):
    from apps.waste.services import digest_enqueue

    settings.FLOPWATCH_DIGEST_PERIOD = "daily"
    make_finding()
    make_finding(project=personas.project_b1, rule="partial_use", wasted_cost="6.50")
    make_finding(rule="memory_held_idle", status="resolved", ended=h(3), detected_late=True,
                 wasted_cost="1.25")  # fmt: skip
    now = h(24 + 0.1)  # just after midnight: yesterday's digest
    assert digest_enqueue(now=now) == 1  # one fleet admin with an e-mail address
    assert digest_enqueue(now=now + dt.timedelta(hours=2)) == 0  # same period
    assert _send(now).sent == 1
    digest = mail.outbox[0]
    assert digest.to == ["admin@example.com"]
    assert "2 open findings" in digest.subject and "10.50 USD" in digest.subject
    assert "Found after they had ended" in digest.body and "1.25" in digest.body
    assert "slurm:9002" in digest.alternatives[0][0]


def test_webhook_fails_twice_then_succeeds(make_finding, personas, webhook_server):
    from apps.waste.models import Channel, Notification
    from apps.waste.services import finding_opened_notify

    server = webhook_server(script=[500, 503])
    Channel.objects.create(team=personas.team_a, url=server.url)
    finding = make_finding()
    finding_opened_notify(finding=finding, now=h(2))
    hook = Notification.objects.get(channel="webhook")
    assert _send(h(2)).retried == 1
    hook.refresh_from_db()
    assert hook.state == "pending" and hook.attempts == 1 and "HTTP 500" in hook.last_error
    first_retry = hook.next_attempt_at
    assert _send(first_retry - dt.timedelta(seconds=1)).sent == 0  # backoff respected
    assert _send(first_retry).retried == 1
    hook.refresh_from_db()
    assert hook.next_attempt_at - first_retry > first_retry - h(2)  # exponential
    assert _send(hook.next_attempt_at).sent == 1
    hook.refresh_from_db()
    assert hook.state == "sent" and hook.attempts == 3
    statuses = [status for status, _ in server.requests]
    assert statuses == [500, 503, 200]
    text = server.requests[-1][1]["text"]
    assert "slurm:9001" in text and "4.00 USD" in text and f"/findings/{finding.pk}/" in text
    assert not Channel.objects.get().broken


def test_webhook_404_marks_channel_broken_and_the_page_shows_it(
    make_finding, personas, webhook_server, client
):
    from apps.waste.models import Channel, Notification
    from apps.waste.services import finding_opened_notify

    server = webhook_server(default_status=404)
    Channel.objects.create(team=personas.team_a, url=server.url)
    finding_opened_notify(finding=make_finding(), now=h(2))
    assert _send(h(2)).failed == 1
    hook = Notification.objects.get(channel="webhook")
    assert hook.state == "failed" and "404" in hook.last_error
    channel = Channel.objects.get()
    assert channel.broken and "404" in channel.last_error
    assert _send(h(5)).sent == 0 and len(server.requests) == 1  # no retry of a 404
    client.force_login(personas.owner)
    page = client.get("/findings/").content.decode()
    assert "Webhook of Team A is broken" in page


def test_finding_resolved_before_sending_is_not_announced(make_finding):
    from apps.waste.models import Finding, Notification
    from apps.waste.services import finding_opened_notify

    finding = make_finding()
    finding_opened_notify(finding=finding, now=h(2))
    Finding.objects.filter(pk=finding.pk).update(status="resolved")
    assert _send(h(2)).skipped == 1
    assert not mail.outbox
    assert Notification.objects.get().last_error == "not sent: finding already resolved"


def test_a_claim_abandoned_by_a_dead_worker_fails_instead_of_sending_twice(make_finding):
    from apps.waste.models import Notification
    from apps.waste.services import finding_opened_notify, notification_claim

    finding_opened_notify(finding=make_finding(), now=h(2))
    notification = Notification.objects.get()
    assert notification_claim(notification_id=notification.pk, now=h(2))
    assert not notification_claim(notification_id=notification.pk, now=h(2))  # exactly once
    assert _send(h(2.5)).failed == 0  # still within the hour: maybe still sending
    assert _send(h(3.1)).failed == 1
    notification.refresh_from_db()
    assert notification.state == "failed" and "worker died" in notification.last_error
    assert not mail.outbox
