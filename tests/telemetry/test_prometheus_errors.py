"""Prometheus import against small local fake servers: slow, refusing, flaky, odd label
spellings and values; input checks of the source and the command; schedule and admin."""

from __future__ import annotations

import base64
import io
import itertools
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlparse

import orjson
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from apps.fleet.models import Cluster, Gpu
from apps.telemetry.models import RawSample
from apps.telemetry.prometheus import (
    PrometheusImportError,
    PrometheusSource,
    duration_parse,
    prometheus_range_import,
    source_check,
)
from apps.telemetry.services import ingest_caches_clear
from apps.tenancy.models import Allocation
from tests.telemetry.prometheus_helpers import FakeServer, free_port

pytestmark = pytest.mark.django_db

T0 = int((datetime.now(tz=UTC) - timedelta(days=1)).timestamp()) // 3600 * 3600
EMPTY = orjson.dumps({"status": "success", "data": {"resultType": "matrix", "result": []}})
RESOLUTION = (
    "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query "
    "resolution (?step=XX)"
)


@pytest.fixture(autouse=True)
def _fresh(settings):
    settings.FLOPWATCH_PROMETHEUS_RETRIES = 0
    ingest_caches_clear()
    yield
    ingest_caches_clear()


def at(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def params(path: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlparse(path).query).items()}


def run(url: str, *, start: int = T0, end: int = T0 + 600, step: int = 30, **kwargs):
    src = PrometheusSource(url=url, cluster_slug="fake", **kwargs)
    return prometheus_range_import(source=src, start=at(start), end=at(end), step_s=step)


def error(status: int, message: str) -> tuple[int, bytes]:
    body = {"status": "error", "errorType": "bad_data", "error": message}
    return status, orjson.dumps(body)


def test_connection_refused_is_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(
        PrometheusImportError, match=f"cannot reach Prometheus at {url}: connection refused"
    ):
        run(url)
    assert not RawSample.objects.exists()


def test_slow_server_times_out_with_a_clear_error(settings):
    def slow(path):
        time.sleep(2)
        return 200, EMPTY

    with FakeServer(slow) as fake:
        began = time.monotonic()
        with pytest.raises(PrometheusImportError, match=r"did not answer within 0\.3 s"):
            run(fake.url, timeout_s=0.3)
        assert time.monotonic() - began < 1.5
        # Retries multiply the wait by (retries + 1), no more.
        settings.FLOPWATCH_PROMETHEUS_RETRIES = 1
        with pytest.raises(PrometheusImportError, match="did not answer"):
            run(fake.url, timeout_s=0.3)
        assert len(fake.requests) == 3


def test_chunks_avoid_the_servers_resolution_limit():
    def strict(path):
        q = params(path)
        points = (int(q["end"]) - int(q["start"])) / int(q["step"].rstrip("s")) + 1
        return error(400, RESOLUTION) if points > 11_000 else (200, EMPTY)

    with FakeServer(strict) as fake:
        result = run(fake.url, start=T0 - 30_000, end=T0, step=1)
    assert result.queries == 7 * result.chunks == len(fake.requests)
    spans = sorted({(int(params(p)["start"]), int(params(p)["end"])) for p in fake.requests})
    assert max(e - s + 1 for s, e in spans) == 10_000  # --chunk-points' default
    # The chunks cover the range once: consecutive chunks share no evaluation time.
    assert spans[0][0] == T0 - 30_000 and spans[-1][1] == T0
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(spans))


def test_the_servers_refusal_is_shown_as_it_says_it():
    with (
        FakeServer(
            lambda path: error(422, "execution: query timed out in expression evaluation")
        ) as fake,
        pytest.raises(PrometheusImportError) as excinfo,
    ):
        run(fake.url)
    assert str(excinfo.value) == (
        f"Prometheus at {fake.url} refused the query: HTTP 422: "
        "execution: query timed out in expression evaluation"
    )
    for answer, message in [
        ((502, b"<html>Bad Gateway</html>"), "HTTP 502: <html>Bad Gateway</html>"),
        ((200, b"<html>login</html>"), "not its query API"),
    ]:
        with (
            FakeServer(lambda path, a=answer: a) as fake,
            pytest.raises(PrometheusImportError, match=message),
        ):
            run(fake.url)


def test_an_overloaded_server_is_retried(settings):
    settings.FLOPWATCH_PROMETHEUS_RETRIES = 2
    answers = iter([error(503, "overloaded")])

    def once_busy(path):
        return next(answers, (200, EMPTY))

    with FakeServer(once_busy) as fake:
        result = run(fake.url)
    assert result.queries == 7 and len(fake.requests) == 8


def matrix(series: list[tuple[dict, list]]) -> bytes:
    result = [{"metric": labels, "values": values} for labels, values in series]
    return orjson.dumps({"status": "success", "data": {"resultType": "matrix", "result": result}})


def test_label_spellings_odd_values_and_empty_pods():
    lower = {"uuid": "GPU-lower", "hostname": "n-lower", "model_name": "NVIDIA L4", "gpu": "2"}
    held = {**lower, "pod": "etl-7", "namespace": ""}
    by_instance = {"UUID": "GPU-inst", "instance": "10.0.0.7:9400", "pod": "", "namespace": "ml"}
    no_uuid = {"Hostname": "x"}  # a label-less dummy family: ignored
    t = T0 + 30

    def answer(path):
        query = params(path)["query"]
        if "DCGM_FI_DEV_GPU_UTIL" in query:
            return 200, matrix(
                [
                    (lower, [[t, "150"], [t + 30, "NaN"]]),  # out of range, no value
                    (held, [[t + 60, "40"], [t + 90, "2147483647"]]),  # a DCGM blank
                    (by_instance, [[t, "5"]]),
                    (no_uuid, [[t, "1"]]),
                ]
            )
        if "DCGM_FI_DEV_POWER_USAGE" in query:
            return 200, matrix([(lower, [[t, "70.5"], [t + 30, "71"]])])
        return 200, EMPTY

    with FakeServer(answer) as fake:
        result = run(fake.url, namespace_projects={"ml": "ml-platform"})
    assert result.invalid_values == 1
    assert (result.samples, result.accepted) == (4, 4)  # t+90 had nothing valid
    rows = dict(RawSample.objects.filter(gpu__uuid="GPU-lower").values_list("ts", "util_pct"))
    assert rows == {t: None, t + 30: None, t + 60: 40.0}
    gpu = Gpu.objects.get(uuid="GPU-lower")
    assert (gpu.node.hostname, gpu.model_name, gpu.index) == ("n-lower", "NVIDIA L4", 2)
    assert Gpu.objects.get(uuid="GPU-inst").node.hostname == "10.0.0.7"
    # A pod without a namespace is still a job; an empty pod is none.
    allocation = Allocation.objects.get()
    assert allocation.external_id == "k8s:etl-7"
    assert list(allocation.gpus.values_list("uuid", flat=True)) == ["GPU-lower"]


def test_auth_headers_and_selector_are_sent():
    with FakeServer(lambda path: (200, EMPTY)) as fake:
        run(fake.url, bearer_token="s3cret", selector='cluster="east"')
        run(fake.url, username="reader", password="pw")
    assert fake.headers[0]["Authorization"] == "Bearer s3cret"
    assert 'DCGM_FI_DEV_GPU_UTIL{cluster="east"}[30s]' in params(fake.requests[0])["query"]
    basic = base64.b64encode(b"reader:pw").decode()
    assert fake.headers[7]["Authorization"] == f"Basic {basic}"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"url": "prometheus:9090"}, "must start with http"),
        ({"project_label": "team-name"}, "not a label name"),
        ({"selector": '{job="dcgm"}'}, "without braces"),
        ({"username": "u", "bearer_token": "t"}, "not both"),
        ({"namespace_projects": {"ns": 3}}, "namespace_projects"),
    ],
)
def test_bad_sources_are_refused(changes, message):
    source = PrometheusSource(**{"url": "http://p:9090", **changes})
    with pytest.raises(PrometheusImportError, match=message):
        source_check(source)


def test_durations():
    assert [duration_parse(t) for t in ("30s", "1m", "1m30s", "90", "2h")] == [30, 60, 90, 90, 7200]
    for bad in ("", "30x", "0s", "500ms", "-5"):
        with pytest.raises(PrometheusImportError):
            duration_parse(bad)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--start", "yesterday", "--end", "2026-01-01"], "--start: 'yesterday' is neither"),
        (["--start", "2026-01-02", "--end", "2026-01-01"], "--end must be after --start"),
        (["--start", "2999-01-01", "--end", "2999-01-02"], "--start is in the future"),
        (["--start", "2026-01-01", "--end", "2026-01-02", "--step", "30x"], "--step: '30x'"),
        (["--start", "2026-01-01", "--end", "2026-01-02", "--chunk-points", "20000"], "1..11000"),
    ],
)
def test_command_refuses_bad_arguments(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("import_prometheus", "--url", "http://127.0.0.1:1", *args, "--no-progress")


def test_command_needs_a_url_and_reports_an_unreachable_server(monkeypatch):
    with pytest.raises(CommandError, match="--url is required"):
        call_command("import_prometheus", "--start", "2026-01-01", "--end", "2026-01-02")
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(CommandError, match="connection refused"):
        call_command(
            "import_prometheus", "--url", url, "--start", str(T0), "--end", str(T0 + 60),
            "--no-progress", stdout=io.StringIO(),
        )  # fmt: skip
    with pytest.raises(CommandError, match="PROM_TOKEN is not set"):
        call_command(
            "import_prometheus", "--url", url, "--start", str(T0), "--end", str(T0 + 60),
            "--token-env", "PROM_TOKEN",
        )  # fmt: skip
    monkeypatch.setenv("PROM_TOKEN", "abc")
    with FakeServer(lambda path: (200, EMPTY)) as fake:
        out = io.StringIO()
        call_command(
            "import_prometheus", "--url", fake.url, "--start", str(T0), "--end", str(T0 + 60),
            "--token-env", "PROM_TOKEN", "--no-progress", stdout=out,
        )  # fmt: skip
    assert fake.headers[0]["Authorization"] == "Bearer abc"
    assert "0 samples from" in out.getvalue()


def test_the_import_is_scheduled_and_its_task_registered():
    from apps.celery import app
    from apps.schedule import BEAT_SCHEDULE

    entry = BEAT_SCHEDULE["prometheus-import"]
    assert entry["task"] == "apps.telemetry.prometheus_tasks.prometheus_import_task"
    assert entry["schedule"] == entry["options"]["expires"] == 300
    app.loader.import_default_modules()
    assert entry["task"] in app.tasks


def test_admin_never_shows_secrets_and_keeps_them(client, django_user_model):
    admin = django_user_model.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(admin)
    cluster = Cluster.objects.create(
        slug="east",
        name="East",
        prometheus_url="https://prom.example.com",
        prometheus_password="hunter2",
        prometheus_bearer_token="",
        prometheus_username="reader",
    )
    listing = client.get("/admin/fleet/cluster/").content.decode()
    change = client.get(f"/admin/fleet/cluster/{cluster.pk}/change/").content.decode()
    assert "prom.example.com" in listing
    assert "hunter2" not in listing and "hunter2" not in change
    form = {
        "slug": "east",
        "name": "East",
        "description": "",
        "prometheus_url": "https://prom.example.com",
        "prometheus_username": "reader",
        "prometheus_password": "",
        "prometheus_bearer_token": "",
        "prometheus_verify_tls": "on",
        "prometheus_selector": "",
        "prometheus_step_s": "30",
        "namespace_projects": '{"ray-llm": "llm"}',
        "project_label": "",
        "prometheus_watermark_0": "",
        "prometheus_watermark_1": "",
    }
    response = client.post(f"/admin/fleet/cluster/{cluster.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    cluster.refresh_from_db()
    assert cluster.prometheus_password == "hunter2"  # blank keeps the stored one
    assert cluster.namespace_projects == {"ray-llm": "llm"}
    response = client.post(
        f"/admin/fleet/cluster/{cluster.pk}/change/", {**form, "clear_prometheus_secrets": "on"}
    )
    assert response.status_code == 302
    cluster.refresh_from_db()
    assert cluster.prometheus_password == ""
    bad = client.post(
        f"/admin/fleet/cluster/{cluster.pk}/change/", {**form, "project_label": "a-b"}
    )
    assert bad.status_code == 200 and "Not a Prometheus label name" in bad.content.decode()


def test_first_periodic_run_starts_catchup_back_and_sets_the_watermark(settings):
    from apps.telemetry.prometheus import cluster_prometheus_import

    now = at(T0 + 1234)
    with FakeServer(lambda path: (200, EMPTY)) as fake:
        cluster = Cluster.objects.create(
            slug="east", name="East", prometheus_url=fake.url, prometheus_step_s=60,
            prometheus_selector='job="dcgm"',
        )  # fmt: skip
        cluster_prometheus_import(cluster=cluster, now=now)
    first = params(fake.requests[0])
    start = T0 + 1234 - settings.FLOPWATCH_PROMETHEUS_CATCHUP_S
    assert int(first["start"]) == -(-start // 60) * 60 and first["step"] == "60s"
    assert 'DCGM_FI_DEV_GPU_UTIL{job="dcgm"}[60s]' in first["query"]
    cluster.refresh_from_db()
    assert cluster.prometheus_watermark == at((T0 + 1234) // 60 * 60)
    assert (cluster.prometheus_last_run_at, cluster.prometheus_last_error) == (now, "")
