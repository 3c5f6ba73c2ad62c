"""``efficiency_by`` and ``GET /api/v1/efficiency`` on hand-computed rollups built from raw
samples (2 h of a busy GPU for project a1, 1 h of an idle GPU holding memory for b1)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from apps.telemetry.rollups import rollups_run_pending
from apps.telemetry.selectors import efficiency_by
from tests.conftest import PASSWORD
from tests.telemetry.test_rollup_helpers import NOW, T0, allocate, at, fleet, samples

pytestmark = pytest.mark.django_db
URL = "/api/v1/efficiency"


@pytest.fixture
def world(personas):
    from apps.chargeback.services import rate_set

    rate_set(model="h100", price=Decimal("4.00"), effective_from=dt.date(2025, 1, 1))
    gpu1, gpu2 = fleet(gpus=2, interval=10)
    samples(gpu1, range(0, 7200, 10), util_pct=50.0, mem_used_mib=40000.0)
    samples(gpu2, range(0, 3600, 10), util_pct=0.0, mem_used_mib=2048.0)
    a = allocate(external_id="job-a", gpus=[gpu1], start=0, end=7200, proj=personas.project_a1)
    b = allocate(external_id="job-b", gpus=[gpu2], start=0, end=3600, proj=personas.project_b1)
    rollups_run_pending(now=NOW)
    return personas, a, b


def test_efficiency_by_project_pools_hours_and_prices_them(world):
    _ = world
    rows = {r.key: r for r in efficiency_by(group="project", start=at(0), end=at(86400))}
    a1, b1 = rows["a1"], rows["b1"]
    # a1: 2 allocated hours, all observed (the last sample's spill past 7200 is outside the
    # allocation), 50 % busy; 2 h x $4.00.
    assert a1.allocated_gpu_hours == 2.0
    assert a1.observed_gpu_hours == 2.0
    assert a1.busy_gpu_hours == pytest.approx(1.0)
    assert a1.idle_gpu_hours == 0
    assert a1.efficiency == pytest.approx(0.5)
    assert (a1.cost, a1.idle_cost) == (Decimal("8.00"), Decimal("0.00"))
    # b1: 1 idle hour with 2 GiB held.
    assert (b1.allocated_gpu_hours, b1.idle_gpu_hours, b1.memory_held_idle_gpu_hours) == (1, 1, 1)
    assert b1.efficiency == 0
    assert (b1.cost, b1.idle_cost) == (Decimal("4.00"), Decimal("4.00"))


def test_groups_and_partial_hours_at_range_ends(world):
    personas, a, _b = world
    teams = efficiency_by(group="team", start=at(0), end=at(7200))
    assert [(r.key, r.allocated_gpu_hours) for r in teams] == [("team-a", 2.0), ("team-b", 1.0)]
    # A range starting at 00:30 counts only hours starting inside it: 01:00 for job-a.
    late = efficiency_by(group="allocation", start=at(1800), end=at(7200))
    assert [(r.key, r.allocated_gpu_hours) for r in late] == [(a.pk, 1.0)]
    gpus = efficiency_by(group="gpu", start=at(0), end=at(7200), cluster="c1")
    assert {r.key for r in gpus} == {"GPU-node-1-0", "GPU-node-1-1"}
    assert efficiency_by(group="gpu", start=at(0), end=at(7200), cluster="nope") == []
    assert efficiency_by(group="gpu", start=at(0), end=at(7200), gpu_model="L40S") == []
    visible = efficiency_by(
        group="project",
        start=at(0),
        end=at(7200),
        projects=personas.project_a1.__class__.objects.filter(slug="a1"),
    )
    assert [r.key for r in visible] == ["a1"]


def test_api_contract_visibility_and_token(world, client):
    from apps.tenancy.services import api_token_create

    personas, _, _ = world
    params = {"group": "project", "start": "2025-11-22T00:00:00Z", "end": "2025-11-23"}
    assert client.get(URL, params).status_code == 401
    client.login(username="owner", password=PASSWORD)
    body = client.get(URL, params).json()
    assert body == [
        {
            "key": "a1",
            "allocated_gpu_hours": 2.0,
            "observed_gpu_hours": 2.0,
            "busy_gpu_hours": 1.0,
            "idle_gpu_hours": 0.0,
            "memory_held_idle_gpu_hours": 0.0,
            "efficiency": 0.5,
            "cost": "8.00",
            "idle_cost": "0.00",
        }
    ]
    client.logout()
    _, token = api_token_create(user=personas.finance, name="script")
    body = client.get(URL, params, HTTP_AUTHORIZATION=f"Bearer {token}").json()
    assert [row["key"] for row in body] == ["a1", "b1"]
    assert body[1]["efficiency"] == 0.0 and body[1]["idle_cost"] == "4.00"
    assert client.get(URL, params, HTTP_AUTHORIZATION="Bearer nope").status_code == 401


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"group": "nation", "start": "2025-11-22", "end": "2025-11-23"}, "group"),
        ({"group": "team", "start": "yesterday", "end": "2025-11-23"}, "start"),
        ({"group": "team", "start": "2025-11-22"}, "end"),
        ({"group": "team", "start": "2025-11-23", "end": "2025-11-22"}, "before end"),
        ({"group": "team", "start": "2025-11-22", "end": "2025-11-22"}, "before end"),
    ],
)
def test_api_bad_input_is_a_clear_400(personas, client, params, message):
    client.login(username="admin", password=PASSWORD)
    response = client.get(URL, params)
    assert response.status_code == 400
    assert message in response.json()["detail"]


def test_efficiency_is_none_when_nothing_observed(personas):
    (gpu,) = fleet(interval=10)
    allocate(external_id="dark", gpus=[gpu], start=0, end=3600, proj=personas.project_a2)
    rollups_run_pending(now=NOW)
    (row,) = efficiency_by(group="project", start=at(0), end=at(3600))
    assert (row.allocated_gpu_hours, row.observed_gpu_hours, row.efficiency) == (1.0, 0, None)
    assert T0 % 86400 == 0
