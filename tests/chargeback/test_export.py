"""The chargeback CSV and page: exact columns, CSV-injection safety, who sees what."""

from __future__ import annotations

import csv
import datetime as dt
import io
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.urls import reverse

from apps.chargeback.export import COLUMNS, csv_text_cell
from apps.chargeback.models import MonthClose
from apps.chargeback.selectors import BillingMonth
from apps.chargeback.services import month_close, rate_set
from apps.tenancy.models import Project, Team
from tests.chargeback.factories import allocation_make, capacity_make, gpu_make, hours_make, ts

pytestmark = pytest.mark.django_db
HEADER = (
    "month,team,cost_center,project,gpu_model,allocated_gpu_hours,busy_gpu_hours,"
    "efficiency_pct,rate_per_gpu_hour,cost,idle_gpu_hours,idle_cost,currency"
)
CSV_URL = "/chargeback/2026-10.csv"


@pytest.fixture
def october(personas):
    """Team A (two projects) and Team B used H100s in October 2026; some capacity idled."""
    rate_set(model="h100", price=Decimal("4.25"), effective_from=dt.date(2026, 1, 1))
    gpu = gpu_make()
    start = ts("2026-10-01T00:00")
    for project, hours in (
        (personas.project_a1, 10),
        (personas.project_a2, 3),
        (personas.project_b1, 7),
    ):
        job = allocation_make(project=project, gpus=[gpu], start=start)
        hours_make(allocation=job, gpu=gpu, first=start, count=hours, busy_s=900, idle_s=1200)
    capacity_make(day=dt.date(2026, 10, 2), unallocated_s=7200)
    return personas


def _rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def _get(client, user, url=CSV_URL):
    client.force_login(user)
    return client.get(url)


def test_url_names():
    assert reverse("chargeback:statement") == "/chargeback/"
    assert reverse("chargeback:csv", kwargs={"month": "2026-10"}) == CSV_URL


def test_csv_columns_and_total(client, october):
    response = _get(client, october.finance)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    text = response.content.decode()
    assert text.splitlines()[0] == HEADER
    assert HEADER.split(",") == COLUMNS
    rows = _rows(text)
    *body, total = rows
    assert [(r["team"], r["project"]) for r in body] == [
        ("Team A", "Project A1"),
        ("Team A", "Project A2"),
        ("Team B", "Project B1"),
        ("platform", "unallocated capacity"),
    ]
    first = body[0]
    assert first == {
        "month": "2026-10",
        "team": "Team A",
        "cost_center": "CC-A",
        "project": "Project A1",
        "gpu_model": "NVIDIA H100",
        "allocated_gpu_hours": "10.0000",
        "busy_gpu_hours": "2.5000",
        "efficiency_pct": "25.0",
        "rate_per_gpu_hour": "4.2500",
        "cost": "42.50",
        "idle_gpu_hours": "3.3333",
        "idle_cost": "14.17",
        "currency": "USD",
    }
    assert total["team"] == "TOTAL"
    assert Decimal(total["cost"]) == sum(Decimal(r["cost"]) for r in body) == Decimal("93.50")
    assert Decimal(total["idle_cost"]) == sum(Decimal(r["idle_cost"]) for r in body)


def test_formula_names_export_as_text(client, october):
    Team.objects.filter(pk=october.team_a.pk).update(
        name='=HYPERLINK("http://x","y")', cost_center="@SUM(A1)"
    )
    Project.objects.filter(pk=october.project_a2.pk).update(name="+1")
    Project.objects.filter(pk=october.project_a1.pk).update(name="-2\tx")
    body = _rows(_get(client, october.finance).content.decode())
    cells = {r["project"]: r for r in body}
    assert cells["'+1"]["team"] == '\'=HYPERLINK("http://x","y")'
    assert cells["'+1"]["cost_center"] == "'@SUM(A1)"
    assert "'-2\tx" in cells
    for row in body:
        for column in ("team", "cost_center", "project", "gpu_model", "currency"):
            assert not row[column].startswith(("=", "+", "-", "@", "\t", "\r"))
        for column in ("allocated_gpu_hours", "cost", "idle_cost"):
            Decimal(row[column])  # numbers stay numbers


@pytest.mark.parametrize(
    ("value", "safe"),
    [
        ("=1+2", "'=1+2"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@x", "'@x"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("Team A", "Team A"),
        ("a=b", "a=b"),
    ],
)
def test_csv_text_cell(value, safe):
    assert csv_text_cell(value) == safe


def test_member_sees_only_own_team(client, october):
    body = _rows(_get(client, october.member).content.decode())[:-1]
    assert {r["team"] for r in body} == {"Team A"}
    assert _get(client, october.member, CSV_URL + "?team=team-b").status_code == 404
    assert _get(client, october.member, CSV_URL + "?team=team-a").status_code == 200
    # An owner sees the projects they own; someone in no team sees nothing.
    owner_rows = _rows(_get(client, october.owner).content.decode())[:-1]
    assert {r["project"] for r in owner_rows} == {"Project A1"}
    assert _get(client, october.nobody).status_code == 403
    assert _get(client, october.outsider, CSV_URL + "?team=team-a").status_code == 404


def test_finance_and_admin_see_every_team(client, october):
    for user in (october.finance, october.admin):
        body = _rows(_get(client, user).content.decode())[:-1]
        assert {r["team"] for r in body} == {"Team A", "Team B", "platform"}
        assert _get(client, user, CSV_URL + "?team=team-b").status_code == 200


def test_anonymous_is_sent_to_login(client, october):
    response = client.get(CSV_URL)
    assert response.status_code == 302
    assert "/login/" in response["Location"]


def test_export_command_writes_the_same_csv(client, october, tmp_path):
    out = tmp_path / "oct.csv"
    call_command("export_chargeback", "--month", "2026-10", "--out", str(out), stderr=io.StringIO())
    assert out.read_bytes() == _get(client, october.finance).content
    stdout = io.StringIO()
    call_command("export_chargeback", "--month", "2026-10", stdout=stdout)
    assert stdout.getvalue() == out.read_bytes().decode()
    with pytest.raises(Exception, match="YYYY-MM"):
        call_command("export_chargeback", "--month", "2026-13")


def test_statement_page_for_roles(client, october):
    client.force_login(october.finance)
    page = client.get("/chargeback/?month=2026-10")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-state="open"' in html
    assert "Project B1" in html
    assert "$93.50" in html
    assert 'href="/chargeback/2026-10.csv"' in html
    assert "chart-cost-history-data" in html
    assert "/chargeback/2026-10/close/" in html  # finance closes
    assert "/reopen/" not in html

    client.force_login(october.member)
    html = client.get("/chargeback/?month=2026-10").content.decode()
    assert "Project B1" not in html
    assert "Project A1" in html
    assert "/close/" not in html
    assert client.get("/chargeback/?month=2026-10&team=team-b").status_code == 404
    assert client.get("/chargeback/?month=2026-99").status_code == 400
    assert client.get("/chargeback/").status_code == 200  # current month


def test_close_and_reopen_through_the_page(client, october):
    client.force_login(october.member)
    assert client.post("/chargeback/2026-10/close/").status_code == 403
    client.force_login(october.admin)
    assert client.post("/chargeback/2026-10/close/").status_code == 403

    client.force_login(october.finance)
    response = client.post("/chargeback/2026-10/close/")
    assert response.status_code == 302
    html = client.get(response["Location"]).content.decode()
    assert 'data-state="closed"' in html
    assert client.post("/chargeback/2026-10/reopen/", {"reason": "x"}).status_code == 403

    client.force_login(october.admin)
    html = client.get("/chargeback/?month=2026-10").content.decode()
    assert "/chargeback/2026-10/reopen/" in html
    client.post("/chargeback/2026-10/reopen/", {"reason": ""})
    assert MonthClose.objects.get().reopened_at is None  # a reason is required
    client.post("/chargeback/2026-10/reopen/", {"reason": "late accounting"})
    close = MonthClose.objects.get()
    assert (close.reopened_by, close.reopen_reason) == (october.admin, "late accounting")
    html = client.get("/chargeback/?month=2026-10").content.decode()
    assert 'data-state="open"' in html
    assert "late accounting" in html


def test_closed_csv_is_frozen(client, october):
    month_close(
        month=BillingMonth(2026, 10),
        user=october.finance,
        now=dt.datetime(2026, 11, 2, tzinfo=dt.UTC),
    )
    before = _get(client, october.finance).content
    rate_set(model="h100", price=Decimal("9"), effective_from=dt.date(2026, 10, 1))
    gpu = gpu_make()
    job = allocation_make(project=october.project_b1, gpus=[gpu], start=ts("2026-10-30T00:00"))
    hours_make(allocation=job, gpu=gpu, first=ts("2026-10-30T00:00"), count=5)
    assert _get(client, october.finance).content == before


def test_unpriced_models_are_flagged(client, october):
    gpu = gpu_make(model="NVIDIA B200")
    job = allocation_make(project=october.project_b1, gpus=[gpu], start=ts("2026-10-03T00:00"))
    hours_make(allocation=job, gpu=gpu, first=ts("2026-10-03T00:00"), count=2)
    client.force_login(october.finance)
    html = client.get("/chargeback/?month=2026-10").content.decode()
    assert 'id="unpriced"' in html
    assert "No rate for NVIDIA B200" in html
