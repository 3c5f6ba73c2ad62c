"""POST /api/v1/samples: every answer of the contract, each bad one with nothing stored."""

from __future__ import annotations

import gzip
import time

import orjson
import pytest

from apps.fleet.models import Gpu, Node
from apps.fleet.services import node_token_revoke
from apps.telemetry.models import AllocationSeen, RawSample, RollupPending
from apps.telemetry.services import ingest_caches_clear
from apps.tenancy.models import Allocation, AllocationGpu
from tests.telemetry.ingest_helpers import (
    H100,
    SAMPLES_URL,
    gpu_uuid,
    make_batch,
    node_with_token,
    post,
)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_caches():
    ingest_caches_clear()
    yield
    ingest_caches_clear()


def nothing_stored() -> bool:
    return not RawSample.objects.exists() and not RollupPending.objects.exists()


def test_accepts_and_stores_everything(client, settings):
    node, token = node_with_token()
    r = post(client, token, make_batch(points=6), gzip_it=True)
    assert r.status_code == 202, r.content
    assert r.json() == {"accepted": 12, "duplicates": 0}
    assert RawSample.objects.count() == 12
    sample = RawSample.objects.order_by("ts").first()
    assert sample.util_pct == 50.0 and sample.sm_active == 0.5 and sample.sm_occupancy is None
    # Inventory, node, attribution.
    gpus = Gpu.objects.filter(node=node)
    assert gpus.count() == 2 and gpus.first().model_name == H100
    node.refresh_from_db()
    assert node.last_seen_at is not None and node.agent_source == "sim"
    assert node.agent_version == "0.1.0" and node.sample_interval_s == 10
    allocation = Allocation.objects.get()
    assert (allocation.source, allocation.external_id) == ("slurm", "slurm:1001")
    assert allocation.project.slug == "llm-pretrain"
    assert allocation.project.team.slug == settings.FLOPWATCH_UNASSIGNED_TEAM
    assert allocation.user_name == "alice"
    assert AllocationGpu.objects.filter(allocation=allocation).count() == 2
    assert AllocationSeen.objects.get().last_ts == RawSample.objects.order_by("-ts").first().ts
    assert RollupPending.objects.filter(gpu__node=node).exists()


def test_nulls_and_absent_fields(client):
    _node, token = node_with_token()
    batch = make_batch(points=3, job=None)
    batch["series"][0]["sm_active"] = [0.5, None, 0.7]
    batch["series"][0]["power_w"] = None
    del batch["series"][1]["temp_c"]
    batch["series"][1]["xid"] = [None, 79, None]
    assert post(client, token, batch).status_code == 202
    rows = {(r.gpu.uuid, i): r for i, r in enumerate(RawSample.objects.order_by("gpu", "ts"))}
    assert len(rows) == 6
    first = RawSample.objects.filter(gpu__uuid=gpu_uuid("gpu-node-001", 0)).order_by("ts")
    assert [r.sm_active for r in first] == [0.5, None, 0.7]
    assert all(r.power_w is None for r in first)
    second = RawSample.objects.filter(gpu__uuid=gpu_uuid("gpu-node-001", 1)).order_by("ts")
    assert [r.xid for r in second] == [None, 79, None]
    assert all(r.temp_c is None for r in second)
    assert not Allocation.objects.exists()


def test_400_lists_every_error_path_and_stores_nothing(client):
    _node, token = node_with_token()
    batch = make_batch(points=20, gpus=4)
    for s in batch["series"]:
        s["ts"] = list(s["ts"])  # unshare
    batch["series"][3]["util_pct"][17] = 100.5
    batch["series"][0]["sm_active"][2] = -0.1
    batch["series"][1]["ts"][5] = batch["series"][1]["ts"][4]
    batch["series"][2]["power_w"] = [1.0] * 19
    batch["series"][1]["mem_used_mib"][0] = "lots"
    batch["series"][0]["temp_c"][1] = True
    batch["series"][0]["bogus"] = [1]
    batch["series"][1]["ts"][0] = 10  # far outside the window
    r = post(client, token, batch)
    assert r.status_code == 400
    paths = {e["path"] for e in r.json()["errors"]}
    assert {
        "series[3].util_pct[17]",
        "series[0].sm_active[2]",
        "series[1].ts[5]",
        "series[2].power_w",
        "series[1].mem_used_mib[0]",
        "series[0].bogus",
        "series[1].ts[0]",
    } <= paths, paths
    assert nothing_stored()
    assert not Gpu.objects.exists() and not Allocation.objects.exists()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b.update(series="nope"),
        lambda b: b.pop("node"),
        lambda b: b["series"][0].update(ts=[1, 2]),
        lambda b: b["series"][0].update(gpu=None),
        lambda b: b["series"][0].update(alloc={"project": "x"}),
        lambda b: b["series"][0].update(util_pct=[[1]] * 5),
        lambda b: b["gpus"][0].update(index=-1),
        lambda b: b["series"][0].update(gpu="GPU-not-listed"),
        lambda b: b["series"][0].update(xid=[1.5] * 5),
        lambda b: b["agent"].update(interval_s=0),
    ],
)
def test_400_cases(client, mutate):
    _node, token = node_with_token()
    batch = make_batch()
    mutate(batch)
    r = post(client, token, batch)
    assert r.status_code == 400, r.content
    assert r.json()["errors"]
    assert nothing_stored()


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda b: b["agent"].update(source="nv\x00ml"), "agent.source"),
        (lambda b: b["agent"].update(version="1\x00"), "agent.version"),
        (lambda b: b.update(batch_id="b\x00"), "batch_id"),
        (lambda b: b["gpus"][0].update(model="H100\x00"), "gpus[0].model"),
        (lambda b: b["gpus"][0].update(uuid="GPU-\x00"), "gpus[0].uuid"),
        (lambda b: b["series"][0].update(gpu="GPU-\x00"), "series[0].gpu"),
        (lambda b: b["series"][0].update(alloc={"job": "j\x00"}), "series[0].alloc.job"),
        (
            lambda b: b["series"][0].update(alloc={"job": "j", "team": "t\x00"}),
            "series[0].alloc.team",
        ),
        (lambda b: b.update(node="gpu-node-\x00"), "node"),
    ],
)
def test_400_nul_characters_named(client, mutate, path):
    # PostgreSQL text cannot hold U+0000: such a string is refused by name, not a 500.
    _node, token = node_with_token()
    batch = make_batch()
    mutate(batch)
    r = post(client, token, batch)
    assert r.status_code == 400, r.content
    assert path in {e["path"] for e in r.json()["errors"]}, r.json()
    assert nothing_stored()


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"[]", b"null", b'{"node": NaN}', b"\xff\xfe", b'"x"'],
)
def test_400_malformed_bodies(client, raw):
    _node, token = node_with_token()
    r = post(client, token, None, raw=raw)
    assert r.status_code == 400
    assert nothing_stored()


def test_400_bad_gzip(client):
    _node, token = node_with_token()
    r = client.post(
        SAMPLES_URL,
        data=b"not gzip at all",
        content_type="application/json",
        HTTP_CONTENT_ENCODING="gzip",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    assert r.status_code == 400
    truncated = gzip.compress(orjson.dumps(make_batch()))[:-20]
    r = client.post(
        SAMPLES_URL,
        data=truncated,
        content_type="application/json",
        HTTP_CONTENT_ENCODING="gzip",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    assert r.status_code == 400
    assert nothing_stored()


def test_401(client):
    node, token = node_with_token()
    assert post(client, None, make_batch()).status_code == 401
    assert post(client, "fwn_wrong", make_batch()).status_code == 401
    r = client.post(
        SAMPLES_URL,
        data=orjson.dumps(make_batch()),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Basic {token}",
    )
    assert r.status_code == 401
    node_token_revoke(node=node)
    ingest_caches_clear()  # a revoked token stops working within TOKEN_CACHE_S
    assert post(client, token, make_batch()).status_code == 401
    assert nothing_stored()


def test_403_other_nodes_gpu_or_name(client):
    _node_a, token_a = node_with_token("node-a")
    node_b, token_b = node_with_token("node-b")
    assert post(client, token_a, make_batch(node="node-a")).status_code == 202
    stored = RawSample.objects.count()
    pending = RollupPending.objects.count()
    # node-b claims node-a's GPUs
    batch = make_batch(node="node-b", start=int(time.time()) - 30)
    batch["gpus"][0]["uuid"] = gpu_uuid("node-a", 0)
    batch["series"][0]["gpu"] = gpu_uuid("node-a", 0)
    r = post(client, token_b, batch)
    assert r.status_code == 403, r.content
    # node-b's token used for a batch that says it is node-a
    r = post(client, token_b, make_batch(node="node-a", start=int(time.time()) - 30))
    assert r.status_code == 403
    assert RawSample.objects.count() == stored
    assert RollupPending.objects.count() == pending
    assert not Gpu.objects.filter(node=node_b).exists()


def test_413_too_many_samples(client, settings):
    settings.FLOPWATCH_INGEST_MAX_SAMPLES = 50
    _node, token = node_with_token()
    r = post(client, token, make_batch(points=30, gpus=2))
    assert r.status_code == 413
    assert nothing_stored()


def test_413_body_too_large(client, settings):
    settings.FLOPWATCH_INGEST_MAX_BODY_BYTES = 2000
    _node, token = node_with_token()
    r = post(client, token, make_batch(points=40))
    assert r.status_code == 413
    assert nothing_stored()


def test_413_gzip_bomb_refused_without_inflating_it(client, settings, monkeypatch):
    settings.FLOPWATCH_INGEST_MAX_BODY_BYTES = 1024 * 1024
    _node, token = node_with_token()
    # 1 GiB of spaces compresses to about 1 MiB; inflating it whole would take a second and
    # a gigabyte. Count what the server inflates.
    import zlib

    inflated = []
    real = zlib.decompressobj

    class Counting:
        def __init__(self, *a):
            self._d = real(*a)

        def decompress(self, data, max_length=0):
            out = self._d.decompress(data, max_length)
            inflated.append(len(out))
            return out

        def __getattr__(self, name):
            return getattr(self._d, name)

    monkeypatch.setattr("apps.telemetry.ingest.zlib.decompressobj", Counting)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b" " * (1024 * 1024)
    bomb = (
        b"".join(
            [compressor.compress(b'{"node": "x", "pad": "')]
            + [compressor.compress(chunk) for _ in range(256)]
        )
        + compressor.flush()
    )
    assert len(bomb) < 300_000
    r = client.post(
        SAMPLES_URL,
        data=bomb,
        content_type="application/json",
        HTTP_CONTENT_ENCODING="gzip",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    assert r.status_code == 413
    assert sum(inflated) <= settings.FLOPWATCH_INGEST_MAX_BODY_BYTES + 1
    assert nothing_stored()


def test_body_larger_than_djangos_form_limit_but_within_ours(client, settings):
    """Django refuses request.body over 2.5 MB; the endpoint streams the body itself."""
    settings.FLOPWATCH_INGEST_MAX_BODY_BYTES = 8 * 1024 * 1024
    _node, token = node_with_token()
    batch = make_batch()
    batch["padding"] = "x" * (5 * 1024 * 1024)  # an unknown top-level key: ignored
    assert post(client, token, batch).status_code == 202
    assert post(client, token, batch, gzip_it=True).json()["duplicates"] == 10


def test_mig_instances_and_gpu_updates(client):
    _node, token = node_with_token()
    batch = make_batch(points=2, gpus=1, job=None)
    batch["gpus"].append(
        {
            "uuid": "MIG-1",
            "index": 0,
            "model": H100,
            "mem_total_mib": 9856,
            "mig_parent": gpu_uuid("gpu-node-001", 0),
            "mig_profile": "1g.10gb",
        }
    )
    batch["series"].append(
        {"gpu": "MIG-1", "ts": batch["series"][0]["ts"], "gr_engine_active": [0.1, 0.2]}
    )
    assert post(client, token, batch).status_code == 202
    mig = Gpu.objects.get(uuid="MIG-1")
    assert mig.mig_parent.uuid == gpu_uuid("gpu-node-001", 0)
    assert mig.mig_profile == "1g.10gb"
    # The agent reports a changed inventory: the row follows.
    ingest_caches_clear()
    batch = make_batch(points=2, gpus=1, job=None, start=int(time.time()) - 40)
    batch["gpus"][0]["mem_total_mib"] = 40000
    assert post(client, token, batch).status_code == 202
    assert Gpu.objects.get(uuid=gpu_uuid("gpu-node-001", 0)).mem_total_mib == 40000


def test_unknown_fields_outside_series_are_ignored(client):
    _node, token = node_with_token()
    batch = make_batch()
    batch["future"] = {"x": 1}
    batch["agent"]["stats"] = {"collected": 10, "sent": 8, "dropped": 2, "last_error": "boom"}
    batch["gpus"][0]["processes"] = [{"pid": 1, "mem_used_mib": 5}]
    batch["series"][0]["alloc"]["extra"] = "x"
    assert post(client, token, batch).status_code == 202


def test_job_change_inside_a_batch_gives_two_allocations(client):
    _node, token = node_with_token()
    start = int(time.time()) - 200
    batch = make_batch(points=3, gpus=1, start=start, job="slurm:1")
    second = make_batch(points=3, gpus=1, start=start + 30, job="k8s:ns/pod")["series"][0]
    batch["series"].append(second)
    r = post(client, token, batch)
    assert r.status_code == 202
    assert r.json()["accepted"] == 6
    assert set(Allocation.objects.values_list("source", flat=True)) == {"slurm", "k8s"}


def test_grace_closed_allocation_reopens_when_its_job_reappears(client, settings):
    from datetime import UTC, datetime

    from apps.tenancy.services import allocations_close_stale

    _node, token = node_with_token()
    start = int(time.time()) - 3000
    assert post(client, token, make_batch(points=3, start=start)).status_code == 202
    assert allocations_close_stale(now=datetime.now(tz=UTC)) == 1
    allocation = Allocation.objects.get()
    assert allocation.end is not None
    assert post(client, token, make_batch(points=3, start=start + 1000)).status_code == 202
    allocation.refresh_from_db()
    assert allocation.end is None


def test_node_and_storage_untouched_by_wrong_method(client):
    _node, _token = node_with_token()
    assert client.get(SAMPLES_URL).status_code == 405
    assert Node.objects.get().last_seen_at is None
