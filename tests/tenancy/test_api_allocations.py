"""POST /api/v1/allocations: service tokens; open, close, re-open; idempotent; buckets marked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from apps.fleet.models import Gpu
from apps.fleet.services import node_get_or_create, service_token_create, service_token_revoke
from apps.telemetry.models import AllocationSeen, RollupPending
from apps.tenancy.models import Allocation
from apps.tenancy.services import allocations_close_stale

URL = "/api/v1/allocations"
START = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


@pytest.fixture
def gpus(db):
    node, _ = node_get_or_create(hostname="alloc-node", cluster_slug="c1")
    return [
        Gpu.objects.create(uuid=f"GPU-alloc-{i}", node=node, index=i, model_name="NVIDIA A100")
        for i in range(2)
    ]


@pytest.fixture
def token(db):
    return service_token_create(name="slurm")[1]


def post(client, token, body):
    return client.post(
        URL, data=body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
    )


def body(**kw):
    out = {
        "external_id": "slurm:4242",
        "project": "a1",
        "user": "alice",
        "gpus": ["GPU-alloc-0", "GPU-alloc-1"],
        "start": START.isoformat(),
        "end": None,
    }
    out.update(kw)
    return out


def test_open_close_reopen_idempotent(client, personas, gpus, token):
    r = post(client, token, body())
    assert r.status_code == 201, r.content
    data = r.json()
    assert data["source"] == "slurm"
    assert data["project"] == "a1"
    assert data["gpus"] == ["GPU-alloc-0", "GPU-alloc-1"]
    assert RollupPending.objects.filter(gpu=gpus[0]).exists()

    assert post(client, token, body()).status_code == 200
    assert Allocation.objects.count() == 1

    end = (START + timedelta(hours=2)).isoformat()
    RollupPending.objects.all().delete()
    r = post(client, token, body(end=end))
    assert r.status_code == 200
    allocation = Allocation.objects.get()
    assert allocation.end == START + timedelta(hours=2)
    assert RollupPending.objects.filter(gpu=gpus[1]).exists()  # the changed span is marked

    RollupPending.objects.all().delete()
    assert post(client, token, body(end=end)).status_code == 200
    assert not RollupPending.objects.exists()  # nothing changed, nothing marked

    r = post(client, token, body(end=None))
    assert r.status_code == 200
    allocation.refresh_from_db()
    assert allocation.end is None
    assert RollupPending.objects.exists()


def test_unknown_project_goes_to_unassigned_team(client, gpus, token, settings):
    r = post(client, token, body(project="brand-new"))
    assert r.status_code == 201
    allocation = Allocation.objects.get()
    assert allocation.project.slug == "brand-new"
    assert allocation.project.team.slug == settings.FLOPWATCH_UNASSIGNED_TEAM


def test_bad_requests(client, personas, gpus, token):
    r = post(client, token, body(gpus=["GPU-nope"]))
    assert r.status_code == 400
    assert r.json()["errors"][0]["path"] == "gpus[0]"
    r = post(client, token, body(end=(START - timedelta(hours=1)).isoformat()))
    assert r.status_code == 400
    assert r.json()["errors"][0]["path"] == "end"
    assert not Allocation.objects.exists()


def test_auth(client, personas, gpus, token):
    assert post(client, "fws_wrong", body()).status_code == 401
    assert client.post(URL, data=body(), content_type="application/json").status_code == 401
    from apps.fleet.models import ServiceToken

    service_token_revoke(service_token=ServiceToken.objects.get())
    assert post(client, token, body()).status_code == 401
    assert not Allocation.objects.exists()


def test_close_stale_after_grace(client, personas, gpus, token, settings):
    settings.FLOPWATCH_ALLOCATION_GRACE_S = 300
    post(client, token, body())
    allocation = Allocation.objects.get()
    last = int((START + timedelta(hours=1)).timestamp())
    AllocationSeen.objects.create(allocation=allocation, last_ts=last)
    now = START + timedelta(hours=1, seconds=200)
    assert allocations_close_stale(now=now) == 0  # still within the grace period
    now = START + timedelta(hours=1, seconds=400)
    assert allocations_close_stale(now=now) == 1
    allocation.refresh_from_db()
    assert allocation.end == datetime.fromtimestamp(
        last + settings.FLOPWATCH_DEFAULT_INTERVAL_S, tz=UTC
    )
    assert AllocationSeen.objects.get().closed_by_grace
    assert allocations_close_stale(now=now) == 0  # idempotent


def test_allocations_in_openapi(client):
    doc = client.get("/api/v1/openapi.json").json()
    assert "/api/v1/allocations" in doc["paths"]
    assert "/api/v1/samples" in doc["paths"]
    samples = doc["paths"]["/api/v1/samples"]["post"]
    assert "series" in samples["requestBody"]["content"]["application/json"]["schema"]["properties"]
