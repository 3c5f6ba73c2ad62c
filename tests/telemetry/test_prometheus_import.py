"""Import from a real Prometheus backfilled with dcgm-exporter series (``promtool tsdb
create-blocks-from openmetrics``): the stored samples and the efficiency API against numbers
computed directly from the backfilled data; idempotent re-imports; a GPU fed by an agent too;
the 11,000-point limit; the periodic task's watermark through an outage and a failure mid-way.
"""

from __future__ import annotations

import io
import math
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command

from apps.fleet.models import Cluster, Gpu, Node
from apps.telemetry.models import RawSample
from apps.telemetry.prometheus import (
    PrometheusImportError,
    PrometheusSource,
    _client,
    _query_range,
    cluster_prometheus_import,
    prometheus_range_import,
)
from apps.telemetry.prometheus_tasks import prometheus_import_task
from apps.telemetry.rollups import rollups_run_pending
from apps.telemetry.services import gpu_samples_ingest, ingest_caches_clear
from apps.tenancy.models import Allocation, AllocationGpu
from tests.conftest import require_tool
from tests.telemetry.ingest_helpers import node_with_token
from tests.telemetry.prometheus_helpers import (
    HPC_UUID,
    MIG_PARENT,
    NEW0_UUID,
    NEW1_UUID,
    OLD_UUID,
    POINTS,
    SCRAPE_S,
    FakeServer,
    free_port,
    imported_ts,
    prometheus_start,
    proxy_to,
)

pytestmark = [pytest.mark.prometheus, pytest.mark.django_db]

# Two days old: promtool refuses samples inside the head block's window of "now".
T0 = int((datetime.now(tz=UTC) - timedelta(days=2)).timestamp()) // 3600 * 3600
NAMESPACES = {"ray-llm": "llm-pretrain"}
URL = "/api/v1/efficiency"


@pytest.fixture(scope="module")
def prom(tmp_path_factory):
    prometheus, promtool = require_tool("prometheus"), require_tool("promtool")
    server = prometheus_start(
        prometheus=prometheus, promtool=promtool, workdir=tmp_path_factory.mktemp("prom"), t0=T0
    )
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _fresh_caches(settings):
    settings.FLOPWATCH_PROMETHEUS_RETRIES = 0
    ingest_caches_clear()
    yield
    ingest_caches_clear()


def at(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def source(url: str, **kwargs) -> PrometheusSource:
    defaults = {"namespace_projects": NAMESPACES, "project_label": "account"}
    return PrometheusSource(url=url, cluster_slug="gpu-east", **{**defaults, **kwargs})


def import_all(url: str, **kwargs):
    return prometheus_range_import(
        source=source(url), start=at(T0), end=at(T0 + POINTS * SCRAPE_S), step_s=30, **kwargs
    )


def stored() -> dict[tuple[str, int], tuple]:
    fields = ("util_pct", "sm_active", "gr_engine_active", "mem_used_mib", "power_w", "temp_c")
    return {
        (row[0], row[1]): row[2:]
        for row in RawSample.objects.values_list("gpu__uuid", "ts", *fields)
    }


def test_samples_match_the_backfilled_data(prom):
    result = import_all(prom.url)
    # 6 devices x 240 scrapes, each at the end of its 30 s step.
    assert (result.samples, result.accepted, result.duplicates) == (1440, 1440, 0)
    assert (result.rejected, result.invalid_values, result.errors) == (0, 0, [])
    rows = stored()
    assert len(rows) == 1440
    fields = ("util_pct", "sm_active", "gr_engine_active", "mem_used_mib", "power_w", "temp_c")
    for gpu in prom.gpus:
        for k in range(POINTS):
            want = tuple(gpu.fields[f](k) if f in gpu.fields else None for f in fields)
            assert rows[(gpu.key, imported_ts(T0, k))] == pytest.approx(want), (gpu.key, k)

    # Identities whatever the label spelling; MIG instances under their parent.
    nodes = dict(Gpu.objects.values_list("uuid", "node__hostname"))
    assert nodes[OLD_UUID] == "old-node-1"  # old exporter: Hostname
    assert nodes[NEW0_UUID] == nodes[NEW1_UUID] == "new-node-1"  # newer: hostname
    old = Gpu.objects.get(uuid=OLD_UUID)
    assert (old.model_name, old.mem_total_mib, old.index) == ("Tesla T4", 15109, 0)
    assert Gpu.objects.get(uuid=NEW1_UUID).index == 1
    parent = Gpu.objects.get(uuid=MIG_PARENT)
    mig = {g.uuid: g for g in parent.mig_instances.all()}
    assert {u: g.mig_profile for u, g in mig.items()} == {
        f"{MIG_PARENT}/gi1": "3g.40gb",
        f"{MIG_PARENT}/gi2": "1g.10gb",
    }
    assert mig[f"{MIG_PARENT}/gi1"].mem_total_mib == 40000
    assert set(Node.objects.values_list("cluster__slug", flat=True)) == {"gpu-east"}
    node = Node.objects.get(hostname="new-node-1")
    assert (node.sample_interval_s, node.agent_source) == (30, "prometheus")

    # Jobs from pod/namespace (mapped to projects) and hpc_job (project from a label);
    # empty pod labels hold nothing.
    allocations = {
        a.external_id: (a.project.slug, a.start, a.end, set(a.gpus.values_list("uuid", flat=True)))
        for a in Allocation.objects.select_related("project")
    }
    first, last = imported_ts(T0, 0), imported_ts(T0, POINTS - 1)
    assert allocations == {
        "k8s:ray-llm/train-abc": (
            "llm-pretrain",
            at(first),
            at(imported_ts(T0, 119) + 30),
            {NEW0_UUID},
        ),
        "k8s:serving/infer-1": ("serving", at(first), at(last + 30), {NEW1_UUID}),
        "k8s:vision/mig-job": ("vision", at(first), at(last + 30), {f"{MIG_PARENT}/gi1"}),
        "slurm:4242": ("physics", at(first), at(last + 30), {HPC_UUID}),
    }
    assert not AllocationGpu.objects.filter(gpu__uuid__in=[OLD_UUID, f"{MIG_PARENT}/gi2"]).exists()
    # The second hour of NEW0 (empty pod labels) is stored, unallocated.
    assert rows[(NEW0_UUID, imported_ts(T0, 200))][1] == pytest.approx(0.0)


def expected_by_project(prom) -> dict[str, dict[str, float]]:
    """Efficiency per project computed directly from the generated scrapes (30 s each)."""
    gpus = {g.key: g for g in prom.gpus}
    out: dict[str, dict[str, float]] = {}

    def add(project: str, key: str, ks: range) -> None:
        g = gpus[key]
        row = out.setdefault(project, {"allocated": 0, "busy": 0, "idle": 0, "held": 0})
        for k in ks:
            f = g.fields
            act = (
                f["gr_engine_active"](k)
                if "gr_engine_active" in f
                else f["sm_active"](k)
                if "sm_active" in f
                else f["util_pct"](k) / 100
            )
            row["allocated"] += SCRAPE_S / 3600
            row["busy"] += act * SCRAPE_S / 3600
            if act < 0.01:
                row["idle"] += SCRAPE_S / 3600
                if f["mem_used_mib"](k) > 1024:
                    row["held"] += SCRAPE_S / 3600

    add("llm-pretrain", NEW0_UUID, range(120))
    add("serving", NEW1_UUID, range(POINTS))
    add("vision", f"{MIG_PARENT}/gi1", range(POINTS))
    add("physics", HPC_UUID, range(POINTS))
    return out


def test_efficiency_api_matches_numbers_from_the_backfilled_data(prom, client, personas):
    import_all(prom.url)
    rollups_run_pending()
    client.force_login(personas.finance)
    params = {
        "group": "project",
        "start": at(T0 - 86_400).isoformat(),
        "end": at(T0 + 86_400).isoformat(),
    }
    body = {row["key"]: row for row in client.get(URL, params).json()}
    expected = expected_by_project(prom)
    assert set(body) == set(expected)
    for project, want in expected.items():
        row = body[project]
        assert row["allocated_gpu_hours"] == pytest.approx(want["allocated"], abs=1e-4), project
        assert row["observed_gpu_hours"] == pytest.approx(want["allocated"], abs=1e-4), project
        assert row["busy_gpu_hours"] == pytest.approx(want["busy"], abs=1e-4), project
        assert row["idle_gpu_hours"] == pytest.approx(want["idle"], abs=1e-4), project
        assert row["memory_held_idle_gpu_hours"] == pytest.approx(want["held"], abs=1e-4)
        assert row["efficiency"] == pytest.approx(want["busy"] / want["allocated"], abs=1e-4)
    # Spot checks by hand: serving is busy 24 x 0.5 x 30 s = 0.1 h of 2 h; physics 75 %.
    assert body["serving"]["busy_gpu_hours"] == pytest.approx(0.1, abs=1e-4)
    assert body["physics"]["efficiency"] == pytest.approx(0.75, abs=1e-4)


def test_importing_twice_or_in_other_chunks_changes_nothing(prom):
    import_all(prom.url)
    rollups_run_pending()
    before = stored()
    allocations = list(Allocation.objects.values_list("external_id", "start", "end").order_by("pk"))
    # Again, in 50-step chunks and over a range shifted by a few seconds: same keys.
    again = prometheus_range_import(
        source=source(prom.url),
        start=at(T0 - 7),
        end=at(T0 + POINTS * SCRAPE_S + 11),
        step_s=30,
        chunk_points=50,
    )
    assert again.chunks == 5 and again.queries == 35
    assert (again.samples, again.accepted, again.duplicates) == (1440, 0, 1440)
    assert stored() == before
    assert (
        list(Allocation.objects.values_list("external_id", "start", "end").order_by("pk"))
        == allocations
    )
    rollups_run_pending()
    from apps.telemetry.selectors import efficiency_by

    rows = efficiency_by(group="project", start=at(T0 - 86_400), end=at(T0 + 86_400))
    assert {r.key: r.observed_gpu_hours for r in rows}["serving"] == pytest.approx(2.0, abs=1e-4)


def test_gpu_fed_by_an_agent_and_prometheus_is_not_counted_twice(prom):
    from apps.telemetry.selectors import efficiency_by
    from apps.tenancy.services import allocations_close_stale

    # The agent on new-node-1 reports NEW1 every 10 s (5 s past the grid), same pod.
    node, _token = node_with_token(hostname="new-node-1", cluster="gpu-east")
    ts = list(range(T0 + 5, T0 + POINTS * SCRAPE_S + 5, 10))
    for i in range(0, len(ts), 500):
        part = ts[i : i + 500]
        batch = {
            "node": "new-node-1",
            "agent": {"version": "0.1.0", "source": "dcgm", "interval_s": 10},
            "gpus": [{"uuid": NEW1_UUID, "index": 1, "model": "NVIDIA H100 80GB HBM3"}],
            "series": [
                {
                    "gpu": NEW1_UUID,
                    "alloc": {"job": "k8s:serving/infer-1", "project": "serving"},
                    "ts": part,
                    "util_pct": [0.0] * len(part),
                    "sm_active": [0.0] * len(part),
                    "mem_used_mib": [20000.0] * len(part),
                }
            ],
        }
        gpu_samples_ingest(node=node, batch=batch, live=False)
    allocations_close_stale()
    rollups_run_pending()
    window = {"start": at(T0 - 86_400), "end": at(T0 + 86_400)}
    agent_only = {r.key: r for r in efficiency_by(group="gpu", **window)}[NEW1_UUID]
    assert agent_only.observed_gpu_hours == pytest.approx(2.0, abs=1e-3)

    result = import_all(prom.url)
    assert result.accepted == 1440  # no key collides: the agent's are at 5 s past the grid
    rollups_run_pending()
    both = {r.key: r for r in efficiency_by(group="gpu", **window)}[NEW1_UUID]
    assert RawSample.objects.filter(gpu__uuid=NEW1_UUID).count() == len(ts) + POINTS
    assert both.observed_gpu_hours == pytest.approx(agent_only.observed_gpu_hours, abs=1e-3)
    assert both.allocated_gpu_hours == pytest.approx(agent_only.allocated_gpu_hours, abs=1e-3)
    # The node keeps its agent's interval and source.
    node.refresh_from_db()
    assert (node.sample_interval_s, node.agent_source) == (10, "dcgm")


def test_chunks_stay_under_the_11000_points_limit(prom):
    # Prometheus itself refuses one query of 12,000 points ...
    src = source(prom.url)
    start = T0 + 3 * 3600  # no data here, nothing to store
    with pytest.raises(PrometheusImportError, match="11,000 points") as excinfo:
        _query_range(
            _client(src),
            source=src,
            query="DCGM_FI_DEV_GPU_UTIL",
            start=start,
            end=start + 11_999,
            step=1,
        )
    assert "HTTP 400" in str(excinfo.value)
    # ... the import splits the same range into chunks it accepts.
    result = prometheus_range_import(source=src, start=at(start), end=at(start + 11_999), step_s=1)
    assert result.chunks >= 2 and result.queries == 7 * result.chunks and result.samples == 0


def test_periodic_task_survives_an_outage_and_catches_up(prom, settings):
    settings.FLOPWATCH_PROMETHEUS_OVERLAP_S = 600
    dead = f"http://127.0.0.1:{free_port()}"
    watermark = at(T0 - 30)
    cluster = Cluster.objects.create(
        slug="gpu-east",
        name="GPU east",
        prometheus_url=dead,
        prometheus_watermark=watermark,
        namespace_projects=NAMESPACES,
        project_label="account",
    )
    Cluster.objects.create(slug="no-prometheus", name="agents only")
    summary = prometheus_import_task()
    assert set(summary) == {"gpu-east"}
    assert "connection refused" in summary["gpu-east"]["error"]
    cluster.refresh_from_db()
    assert cluster.prometheus_watermark == watermark  # not advanced
    assert "connection refused" in cluster.prometheus_last_error
    assert cluster.prometheus_last_run_at is not None
    assert not RawSample.objects.exists()

    Cluster.objects.filter(pk=cluster.pk).update(prometheus_url=prom.url)
    summary = prometheus_import_task()
    assert summary["gpu-east"]["accepted"] == 1440
    cluster.refresh_from_db()
    assert cluster.prometheus_last_error == ""
    # One run imports at most FLOPWATCH_PROMETHEUS_CATCHUP_S (6 h) from the watermark - overlap.
    end = int(watermark.timestamp()) - 600 + settings.FLOPWATCH_PROMETHEUS_CATCHUP_S
    assert cluster.prometheus_watermark == at(end // 30 * 30)
    assert RawSample.objects.count() == 1440
    # The next run resumes there: nothing new, nothing twice.
    assert prometheus_import_task()["gpu-east"]["accepted"] == 0


def test_failure_mid_import_leaves_whole_chunks_and_the_next_run_finishes(prom):
    calls = {"n": 0}
    forward = proxy_to(prom.url)

    def flaky(path: str):
        calls["n"] += 1
        if calls["n"] == 10:  # chunk 2's third metric
            return 503, b'{"status":"error","errorType":"unavailable","error":"TSDB is closing"}'
        return forward(path)

    with FakeServer(flaky) as fake:
        cluster = Cluster.objects.create(
            slug="gpu-east",
            name="GPU east",
            prometheus_url=fake.url,
            prometheus_watermark=at(T0),
            namespace_projects=NAMESPACES,
        )
        with pytest.raises(PrometheusImportError, match="HTTP 503: TSDB is closing"):
            cluster_prometheus_import(cluster=cluster, chunk_points=50)
    cluster.refresh_from_db()
    # Chunk 1 (50 steps from watermark - 10 min) is stored whole, chunk 2 not at all.
    chunk1_end = T0 - 600 + 49 * 30
    assert cluster.prometheus_watermark == at(chunk1_end)
    assert "TSDB is closing" in cluster.prometheus_last_error
    steps_with_data = sum(1 for k in range(POINTS) if imported_ts(T0, k) <= chunk1_end)
    assert RawSample.objects.count() == 6 * steps_with_data
    assert RawSample.objects.order_by("-ts").first().ts == chunk1_end

    cluster.prometheus_url = prom.url
    cluster.save()
    result = cluster_prometheus_import(cluster=cluster)
    assert result.accepted == 1440 - 6 * steps_with_data
    assert RawSample.objects.count() == 1440


def test_command_imports_with_progress_and_explains_refusals(prom):
    out, err = io.StringIO(), io.StringIO()
    call_command(
        "import_prometheus",
        "--url", prom.url,
        "--start", at(T0).isoformat(),
        "--end", str(T0 + POINTS * SCRAPE_S),
        "--step", "30s",
        "--cluster", "gpu-east",
        "--namespace-map", "ray-llm=llm-pretrain,other=x",
        "--project-label", "account",
        stdout=out,
        stderr=err,
    )  # fmt: skip
    assert "241/241" in err.getvalue()  # the progress bar, in evaluation steps
    assert "1440 samples from" in out.getvalue() and "1440 stored, 0 duplicates" in out.getvalue()
    assert (
        Allocation.objects.get(external_id="k8s:ray-llm/train-abc").project.slug == "llm-pretrain"
    )
    assert Node.objects.get(hostname="old-node-1").cluster.slug == "gpu-east"

    # The cluster's own settings are the defaults; the server's refusal is shown as it says it.
    Cluster.objects.filter(slug="gpu-east").update(
        prometheus_url=prom.url, prometheus_selector='job=~"("'
    )
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match=r"refused the query: HTTP 400: .*regexp"):
        call_command(
            "import_prometheus", "--cluster", "gpu-east", "--start", str(T0), "--end", str(T0 + 600),
            "--no-progress", stdout=io.StringIO(),
        )  # fmt: skip
    assert math.isclose(RawSample.objects.count(), 1440)
