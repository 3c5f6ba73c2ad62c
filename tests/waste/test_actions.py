"""Acting on findings: signed e-mail links, the findings pages, and the findings API."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from django.core import signing
from django.utils import timezone


def _link_path(finding, user, action="acknowledge"):
    from apps.waste.links import action_token_make

    token = action_token_make(finding_id=finding.pk, user_id=user.pk, action=action)
    return f"/findings/act/{token}/"


def test_link_acknowledges_as_the_user_it_was_sent_to(make_finding, personas, client):
    finding = make_finding()
    path = _link_path(finding, personas.owner)
    page = client.get(path)  # anonymous: the link is the credential; GET changes nothing
    assert page.status_code == 200 and b"Acknowledge this finding?" in page.content
    finding.refresh_from_db()
    assert finding.status == "open"
    done = client.post(path, {"comment": "restarting the job"})
    assert done.status_code == 200 and b"Finding acknowledged" in done.content
    finding.refresh_from_db()
    assert finding.status == "acknowledged"
    assert finding.acknowledged_by == personas.owner
    assert finding.comment == "restarting the job"
    event = finding.events.last()
    assert (event.kind, event.old_status, event.actor) == ("acknowledged", "open", personas.owner)


def test_snooze_link(make_finding, personas, client):
    finding = make_finding()
    before = timezone.now()
    assert (
        client.post(_link_path(finding, personas.manager, "snooze"), {"hours": "72"}).status_code
        == 200
    )
    finding.refresh_from_db()
    assert finding.status == "snoozed"
    assert finding.snoozed_until - before >= dt.timedelta(hours=72)


def test_tampered_link_is_refused(make_finding, personas, client):
    finding = make_finding()
    path = _link_path(finding, personas.owner)
    token = path.split("/")[3]
    forged = signing.dumps({"f": finding.pk, "u": personas.admin.pk, "a": "acknowledge"},
                           salt="another-salt")  # fmt: skip
    for bad in (token[:-2] + ("AA" if token[-2:] != "AA" else "BB"), forged, "garbage"):
        response = client.post(f"/findings/act/{bad}/")
        assert response.status_code == 400, bad
        assert b"not valid" in response.content
    finding.refresh_from_db()
    assert finding.status == "open"


def test_expired_link_is_refused(make_finding, personas, client, settings, monkeypatch):
    settings.FLOPWATCH_LINK_MAX_AGE_S = 3600
    finding = make_finding()
    real = time.time
    monkeypatch.setattr(signing.time, "time", lambda: real() - 7200)  # signed 2 h ago
    path = _link_path(finding, personas.owner)
    monkeypatch.undo()
    response = client.post(path)
    assert response.status_code == 400 and b"expired" in response.content
    finding.refresh_from_db()
    assert finding.status == "open"


@pytest.mark.parametrize("who", ["outsider", "member", "nobody"])
def test_link_of_someone_who_may_not_act_does_nothing(make_finding, personas, client, who):
    finding = make_finding()
    response = client.post(_link_path(finding, getattr(personas, who)))
    assert response.status_code == 403
    finding.refresh_from_db()
    assert finding.status == "open"


def test_findings_page_filters_and_visibility(make_finding, personas, client):
    mine = make_finding()
    other = make_finding(project=personas.project_b1, rule="partial_use", severity="critical")
    client.force_login(personas.admin)
    page = client.get("/findings/").content.decode()
    assert f'id="finding-{mine.pk}"' in page and f'id="finding-{other.pk}"' in page
    page = client.get("/findings/?rule=partial_use").content.decode()
    assert f'id="finding-{mine.pk}"' not in page and f'id="finding-{other.pk}"' in page
    page = client.get("/findings/?severity=critical&team=team-b&status=open").content.decode()
    assert f'id="finding-{other.pk}"' in page and f'id="finding-{mine.pk}"' not in page
    assert client.get("/findings/?rule=nonsense").status_code == 400
    client.force_login(personas.outsider)
    page = client.get("/findings/").content.decode()
    assert f'id="finding-{mine.pk}"' not in page and f'id="finding-{other.pk}"' in page
    assert client.get(f"/findings/{mine.pk}/").status_code == 404
    assert client.post(f"/findings/{mine.pk}/resolve/").status_code == 404


def test_page_actions_respect_who_may_act(make_finding, personas, client):
    finding = make_finding()
    client.force_login(personas.member)  # sees team A, may not act
    page = client.get(f"/findings/{finding.pk}/").content.decode()
    assert "Project owners, team managers and fleet admins can act" in page
    client.post(f"/findings/{finding.pk}/acknowledge/", {"comment": "x"})
    finding.refresh_from_db()
    assert finding.status == "open"
    client.force_login(personas.owner)
    response = client.post(
        f"/findings/{finding.pk}/snooze/", {"until": "2099-01-01 09:00", "next": "/findings/?rule="}
    )
    assert response.status_code == 302 and response["Location"] == "/findings/?rule="
    finding.refresh_from_db()
    assert finding.status == "snoozed" and finding.snoozed_until.year == 2099
    client.post(f"/findings/{finding.pk}/resolve/")
    finding.refresh_from_db()
    assert finding.status == "resolved"
    kinds = list(finding.events.values_list("kind", flat=True))
    assert kinds == ["opened", "snoozed", "resolved"]
    detail = client.get(f"/findings/{finding.pk}/").content.decode()
    assert "History" in detail and "snoozed" in detail


def test_snoozed_finding_wakes_up(make_finding, personas):
    from apps.waste.services import finding_snooze, snoozes_wake

    finding = make_finding()
    now = timezone.now()
    finding_snooze(finding=finding, user=personas.owner, until=now + dt.timedelta(hours=4), now=now)
    assert snoozes_wake(now=now + dt.timedelta(hours=3)) == 0
    assert snoozes_wake(now=now + dt.timedelta(hours=4)) == 1
    finding.refresh_from_db()
    assert finding.status == "open"


def test_api_findings_contract_and_visibility(make_finding, personas, client):
    from apps.core.tokens import token_generate, token_hash
    from apps.tenancy.models import ApiToken

    mine = make_finding()
    make_finding(project=personas.project_b1)
    make_finding(status="resolved")
    assert client.get("/api/v1/findings?status=open").status_code == 401
    client.force_login(personas.owner)
    rows = client.get("/api/v1/findings?status=open").json()
    assert [r["id"] for r in rows] == [mine.pk]
    row = rows[0]
    assert set(row) == {"id", "type", "project", "allocation", "gpus", "started",
                        "wasted_gpu_hours", "wasted_cost", "severity", "status"}  # fmt: skip
    assert row["type"] == "idle_allocation" and row["project"] == "a1"
    assert row["allocation"] == "slurm:9001" and row["gpus"] == ["GPU-f-1"]
    assert row["wasted_cost"] == "4.00" and row["wasted_gpu_hours"] == 2.0
    assert row["status"] == "open"
    assert client.get("/api/v1/findings?status=bogus").status_code == 400
    client.logout()
    token = token_generate(prefix="fwu")
    ApiToken.objects.create(user=personas.outsider, name="t", token_hash=token_hash(token=token),
                            token_prefix=token[:8])  # fmt: skip
    rows = client.get("/api/v1/findings?status=open", HTTP_AUTHORIZATION=f"Bearer {token}").json()
    assert [r["project"] for r in rows] == ["b1"]
    bad = client.get("/api/v1/findings", HTTP_AUTHORIZATION="Bearer nope")
    assert bad.status_code == 401


def test_user_opts_out_and_back_in_from_the_findings_page(personas, client):
    from apps.waste.models import NotificationPreference

    client.force_login(personas.owner)
    assert b"Turn off" in client.get("/findings/").content
    client.post("/findings/preferences/", {"email_opt_out": "1"})
    assert NotificationPreference.objects.get(user=personas.owner).email_opt_out
    assert b"Turn on" in client.get("/findings/").content
    client.post("/findings/preferences/", {"email_opt_out": "0"})
    assert not NotificationPreference.objects.get(user=personas.owner).email_opt_out
