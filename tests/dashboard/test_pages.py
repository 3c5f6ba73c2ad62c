"""Every page for every role: what each may see renders, the rest is 403 (pages a role may not
open) or 404 (objects it may not see); numbers match the efficiency function."""

from __future__ import annotations

import datetime as dt
import json
import re

import plotly.graph_objects as go
import pytest
from django.urls import reverse

from apps.dashboard import charts
from apps.dashboard.filters import FilterError, filters_parse
from apps.telemetry.selectors import efficiency_by
from tests.conftest import PASSWORD
from tests.dashboard.factories import dash_data_build

pytestmark = pytest.mark.django_db


@pytest.fixture
def data(personas):
    return dash_data_build(personas)


def _pages(data) -> dict[str, str]:
    g0, _, g2, g3, g4 = data.gpus
    return {
        "overview": reverse("home"),
        "teams": reverse("teams"),
        "projects": reverse("projects"),
        "team-a": reverse("team", args=["team-a"]),
        "team-b": reverse("team", args=["team-b"]),
        "project-a1": reverse("project", args=["a1"]),
        "project-a2": reverse("project", args=["a2"]),
        "project-b1": reverse("project", args=["b1"]),
        "job-a1": reverse("job", args=[data.job_a1.pk]),
        "job-a2": reverse("job", args=[data.job_a2.pk]),
        "job-b1": reverse("job", args=[data.job_b1.pk]),
        "fleet": reverse("fleet"),
        "fleet-state": reverse("fleet-fragment"),
        "gpu-a1": reverse("gpu", args=[g0.uuid]),
        "gpu-a2": reverse("gpu", args=[g2.uuid]),
        "gpu-b1": reverse("gpu", args=[g3.uuid]),
        "gpu-free": reverse("gpu", args=[g4.uuid]),
    }


EVERYTHING = {
    "overview",
    "teams",
    "projects",
    "team-a",
    "team-b",
    "project-a1",
    "project-a2",
    "project-b1",
    "job-a1",
    "job-a2",
    "job-b1",
    "fleet",
    "fleet-state",
    "gpu-a1",
    "gpu-a2",
    "gpu-b1",
    "gpu-free",
}
LISTS = {"overview", "teams", "projects"}
TEAM_A_MEMBER = LISTS | {
    "team-a",
    "project-a1",
    "project-a2",
    "job-a1",
    "job-a2",
    "gpu-a1",
    "gpu-a2",
}
# role -> pages it may open; every other page answers 403 (fleet) or 404 (objects).
ALLOWED = {
    "admin": EVERYTHING,
    "finance": EVERYTHING,
    "owner": LISTS | {"team-a", "project-a1", "job-a1", "gpu-a1"},
    "member": TEAM_A_MEMBER,
    "manager": TEAM_A_MEMBER,
    "outsider": LISTS | {"team-b", "project-b1", "job-b1", "gpu-b1"},
    "nobody": LISTS,
}
FORBIDDEN_PAGES = {"fleet", "fleet-state"}


@pytest.mark.parametrize("role", sorted(ALLOWED))
def test_role_page_matrix(client, personas, data, role):
    assert client.login(username=role, password=PASSWORD)
    pages = _pages(data)
    got = {}
    for name, url in pages.items():
        got[name] = client.get(url).status_code
    expected = {
        name: 200 if name in ALLOWED[role] else (403 if name in FORBIDDEN_PAGES else 404)
        for name in pages
    }
    assert got == expected


def test_pages_need_login(client, data):
    for url in _pages(data).values():
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))


@pytest.mark.parametrize(
    ("role", "sees", "hidden"),
    [
        ("admin", ["Team A", "Team B", "Fleet"], []),
        ("finance", ["Team A", "Team B", "Fleet"], []),
        ("member", ["Team A"], ["Team B", ">Fleet<"]),
        ("owner", ["Team A"], ["Team B", ">Fleet<"]),
        ("outsider", ["Team B"], ["Team A", ">Fleet<"]),
        ("nobody", ["not in any team"], ["Team A", "Team B", ">Fleet<"]),
    ],
)
def test_overview_and_navigation_show_only_what_the_role_may_see(client, data, role, sees, hidden):
    assert client.login(username=role, password=PASSWORD)
    body = client.get(reverse("home")).content.decode()
    for text in sees:
        assert text in body
    for text in hidden:
        assert text not in body
    for label in ("Overview", "Teams", "Projects"):
        assert f">{label}</a>" in body


def _leaderboard(response) -> dict[str, dict]:
    return {r["team"].slug: r for r in response.context["leaderboard"]}


@pytest.mark.parametrize("range_key", ["24h", "7d", "30d"])
def test_team_figures_match_the_efficiency_function(client, data, range_key):
    assert client.login(username="admin", password=PASSWORD)
    response = client.get(reverse("teams"), {"range": range_key})
    filters = response.context["filters"]
    rows = efficiency_by(group="team", start=filters.start, end=filters.end)
    board = _leaderboard(response)
    assert rows
    for row in rows:
        team = board.get(str(row.key))
        if team is None:  # keyed by id
            team = next(r for r in board.values() if str(r["team"].pk) == str(row.key))
        assert team["allocated_gpu_hours"] == pytest.approx(row.allocated_gpu_hours)
        assert team["efficiency"] == pytest.approx(row.efficiency)
        assert team["cost"] == row.cost
        assert team["idle_cost"] == row.idle_cost
    # b1's one GPU runs at 90 %; a1 runs one GPU at 80 % and holds one idle.
    assert board["team-b"]["efficiency"] == pytest.approx(0.9, abs=1e-6)
    body = response.content.decode()
    assert "90.0 %" in body
    assert "GPU-h" in body
    assert "$" in body


def test_member_numbers_are_limited_to_their_projects(client, data):
    assert client.login(username="owner", password=PASSWORD)
    response = client.get(reverse("teams"), {"range": "24h"})
    board = _leaderboard(response)
    assert set(board) == {"team-a"}
    # The owner sees only a1 (0.8 and 0.0 on two GPUs): 40 %, not team A's mix with a2.
    assert board["team-a"]["efficiency"] == pytest.approx(0.4, abs=1e-6)


def test_project_page_shows_jobs_heatmap_and_trend(client, data):
    assert client.login(username="member", password=PASSWORD)
    response = client.get(reverse("project", args=["a1"]), {"range": "24h"})
    assert response.status_code == 200
    body = response.content.decode()
    assert "slurm:1001" in body
    assert response.context["totals"].efficiency == pytest.approx(0.4, abs=1e-6)
    assert response.context["totals"].memory_held_idle_gpu_hours == pytest.approx(24, rel=0.05)
    heat = json.loads(response.context["heatmap_json"])
    assert heat["data"][0]["type"] == "heatmap"
    assert heat["data"][0]["y"] == ["gpu-east-01/0", "gpu-east-01/1"]
    trend = json.loads(response.context["trend_json"])
    assert any(v is not None for v in trend["data"][1]["y"])
    assert 'id="chart-heatmap"' in body
    assert "plotly-" in body  # plotly.js included on chart pages


def test_job_page_has_each_gpu_activity_memory_and_power(client, data):
    assert client.login(username="admin", password=PASSWORD)
    response = client.get(reverse("job", args=[data.job_a1.pk]))
    assert response.status_code == 200
    names = [c["id"] for c in response.context["charts"]]
    assert names == ["activity", "memory", "power"]
    activity = json.loads(response.context["charts"][0]["json"])
    assert [t["name"] for t in activity["data"]] == ["gpu-east-01/0", "gpu-east-01/1"]
    assert max(v for v in activity["data"][0]["y"] if v is not None) == pytest.approx(80.0)


def test_fleet_page_and_fragment_show_current_state(client, data):
    assert client.login(username="admin", password=PASSWORD)
    page = client.get(reverse("fleet"))
    assert 'data-refresh-url="/fleet/state/"' in page.content.decode()
    fragment = client.get(reverse("fleet-fragment"), {"cluster": "east"})
    body = fragment.content.decode()
    assert fragment["Cache-Control"] == "no-store"
    assert "<html" not in body
    assert "gpu-east-01" in body
    assert "gpu-west-01" not in body
    assert "slurm:1001" in body  # who holds it
    assert "80 %" in body


def test_fleet_shows_the_newest_bucket_with_samples_not_a_spill_only_one(client, data):
    from apps.telemetry.models import GpuRollup5m

    newest = GpuRollup5m.objects.filter(gpu__node__hostname="gpu-east-01", gpu__index=0).latest(
        "bucket"
    )
    # A new bucket has begun: so far it holds only the last sample's spill-over.
    GpuRollup5m.objects.create(
        gpu_id=newest.gpu_id, bucket=newest.bucket + 300, samples=0, covered_s=10.0,
        missing_s=290.0, busy_s=8.0, idle_s=0.0, mem_held_idle_s=0.0,
    )  # fmt: skip
    assert client.login(username="admin", password=PASSWORD)
    body = client.get(reverse("fleet-fragment"), {"cluster": "east"}).content.decode()
    memory = f"{newest.mem_used_mean_mib / 1024:.1f} / 80 GiB"
    assert memory in body


def test_overview_capacity_chart_and_kpis(client, data):
    assert client.login(username="admin", password=PASSWORD)
    response = client.get(reverse("home"), {"range": "24h"})
    counts = response.context["now_counts"]
    assert (counts.total, counts.allocated, counts.busy) == (5, 3, 2)
    fig = json.loads(response.context["capacity_json"])
    assert [t["name"] for t in fig["data"]] == ["Busy", "Allocated, idle", "Unallocated"]
    busy = [v for v in fig["data"][0]["y"] if v]
    assert busy and max(busy) == pytest.approx(1.7, abs=0.01)  # 0.8 + 0.9 GPUs
    # A member sees no fleet capacity (no "Unallocated" series).
    client.logout()
    assert client.login(username="member", password=PASSWORD)
    fig = json.loads(client.get(reverse("home")).context["capacity_json"])
    assert [t["name"] for t in fig["data"]] == ["Busy", "Allocated, idle"]


def test_filters_change_the_data(client, data):
    assert client.login(username="admin", password=PASSWORD)
    west = _leaderboard(client.get(reverse("teams"), {"range": "24h", "cluster": "west"}))
    assert west["team-a"]["allocated_gpu_hours"] == 0
    assert west["team-b"]["allocated_gpu_hours"] > 0
    a100 = _leaderboard(
        client.get(reverse("teams"), {"range": "24h", "gpu_model": "NVIDIA A100-SXM4-40GB"})
    )
    assert a100["team-a"]["allocated_gpu_hours"] == 0
    day = _leaderboard(client.get(reverse("teams"), {"range": "24h"}))
    week = _leaderboard(client.get(reverse("teams"), {"range": "7d"}))
    assert week["team-a"]["allocated_gpu_hours"] > day["team-a"]["allocated_gpu_hours"]
    # Links keep the filters so a view can be shared.
    body = client.get(reverse("teams"), {"range": "24h", "cluster": "west"}).content.decode()
    assert "/teams/team-b/?range=24h&amp;cluster=west" in body


def test_teams_sort(client, data):
    assert client.login(username="admin", password=PASSWORD)
    by_cost = client.get(reverse("teams"), {"sort": "cost", "range": "24h"})
    costs = [r["cost"] for r in by_cost.context["leaderboard"]]
    assert costs == sorted(costs, reverse=True)
    by_eff = client.get(reverse("teams"), {"sort": "efficiency", "range": "24h"})
    assert [r["team"].slug for r in by_eff.context["leaderboard"]] == ["team-a", "team-b"]
    assert client.get(reverse("teams"), {"sort": "bogus"}).status_code == 400


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"range": "3w"}, "expected one of 24h, 7d, 30d or custom"),
        ({"cluster": "nowhere"}, "no cluster with the slug"),
        ({"range": "custom", "start": "yesterday"}, "expected a date or date-time"),
        ({"start": "2026-10-02", "end": "2026-10-01"}, "must be before end"),
        ({"start": "2020-01-01", "end": "2026-01-01"}, "at most 400 days"),
    ],
)
def test_bad_filters_answer_400_naming_the_parameter(client, data, params, message):
    assert client.login(username="member", password=PASSWORD)
    response = client.get(reverse("project", args=["a1"]), params)
    assert response.status_code == 400
    assert message in response.content.decode()


def test_filters_parse_custom_and_query_round_trip():
    now = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)
    f = filters_parse(query={"start": "2026-11-01", "end": "2026-11-08T06:30"}, now=now)
    assert f.range_key == "custom"
    assert f.start == dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    assert f.end == dt.datetime(2026, 11, 8, 6, 30, tzinfo=dt.UTC)
    assert f.query() == "?range=custom&start=2026-11-01T00%3A00&end=2026-11-08T06%3A30"
    assert filters_parse(query={}, now=now).range_key == "7d"
    assert filters_parse(query={"range": "24h"}, now=now).bucket_s() == 300
    assert filters_parse(query={"range": "30d"}, now=now).bucket_s() == 3 * 3600
    with pytest.raises(FilterError) as info:
        filters_parse(query={"range": "x", "start": "nope"}, now=now)
    assert [name for name, _ in info.value.errors] == ["range"]


def test_downsample_caps_series_at_2000_points():
    x = list(range(10_000))
    y = [float(i % 7) for i in x]
    xs, ys = charts.downsample(x, y)
    assert len(xs) == len(ys) <= charts.MAX_POINTS
    assert charts.downsample([1, 2], [None, 1.0]) == ([1, 2], [None, 1.0])


def test_every_chart_series_stays_under_2000_points(client, data):
    assert client.login(username="admin", password=PASSWORD)
    for url, params in [
        (reverse("home"), {"start": "2026-01-01", "end": "2027-01-01"}),
        (reverse("project", args=["a1"]), {"range": "30d"}),
        (reverse("gpu", args=[data.gpus[0].uuid]), {"range": "30d"}),
    ]:
        body = client.get(url, params).content.decode()
        blobs = re.findall(r'<script type="application/json"[^>]*>(.*?)</script>', body, re.S)
        assert blobs
        for blob in blobs:
            figure = json.loads(blob)
            go.Figure(figure)  # valid against plotly's schema (raises otherwise)
            for trace in figure["data"]:
                assert len(trace.get("x", [])) <= charts.MAX_POINTS


def test_plotly_js_is_served_locally(client, data):
    import plotly

    assert client.login(username="member", password=PASSWORD)
    url = reverse("plotly-js", args=[plotly.__version__])
    response = client.get(url)
    assert response.status_code == 200
    assert response["Content-Type"] == "text/javascript"
    assert "immutable" in response["Cache-Control"]
    assert len(b"".join(response.streaming_content)) > 1_000_000
    assert client.get(reverse("plotly-js", args=["0.0.0"])).status_code == 404
    page = client.get(reverse("project", args=["a1"])).content.decode()
    assert page.count(url) == 1
    assert "cdn" not in page.lower()


def test_empty_states_say_what_to_do(client, personas):
    assert client.login(username="admin", password=PASSWORD)
    body = client.get(reverse("home")).content.decode()
    assert "No agent has reported yet" in body
    assert "flopwatch-agent --server" in body
    fleet = client.get(reverse("fleet")).content.decode()
    assert "No agent has reported yet" in fleet


def test_worst_open_findings_are_listed_for_who_may_see_them(client, data):
    waste = pytest.importorskip("apps.waste.models")
    now = data.now
    for project, job, cost in (
        (data.job_a1.project, data.job_a1, "120.00"),
        (data.job_b1.project, data.job_b1, "7.00"),
    ):
        waste.Finding.objects.create(
            rule=waste.Finding._meta.get_field("rule").choices[0][0],
            subject=f"alloc:{job.pk}",
            allocation=job,
            project=project,
            started=now - dt.timedelta(hours=3),
            last_seen=now,
            detected_at=now,
            wasted_gpu_hours=3.0,
            wasted_cost=cost,
            severity="warning",
        )
    assert client.login(username="admin", password=PASSWORD)
    findings = client.get(reverse("home")).context["findings"]
    assert [f.allocation.external_id for f in findings] == ["slurm:1001", "slurm:2001"]
    client.logout()
    assert client.login(username="outsider", password=PASSWORD)
    body = client.get(reverse("home")).content.decode()
    assert "slurm:2001" in body
    assert "slurm:1001" not in body
    project_page = client.get(reverse("project", args=["b1"])).content.decode()
    assert "$7.00" in project_page


@pytest.mark.parametrize("role", ["admin", "member", "outsider"])
def test_page_numbers_match_the_efficiency_api(client, data, role):
    assert client.login(username=role, password=PASSWORD)
    end = data.now.replace(minute=0, second=0, microsecond=0)
    start = end - dt.timedelta(days=1)
    params = {"start": start.isoformat(), "end": end.isoformat()}
    page = client.get(reverse("teams"), params)
    assert page.status_code == 200
    api = client.get("/api/v1/efficiency", {"group": "team", **params})
    assert api.status_code == 200, api.content
    board = _leaderboard(page)
    assert {row["key"] for row in api.json()} <= set(board)
    for row in api.json():
        team = board[row["key"]]
        assert team["allocated_gpu_hours"] == pytest.approx(row["allocated_gpu_hours"])
        assert team["busy_gpu_hours"] == pytest.approx(row["busy_gpu_hours"])
        assert f"{team['cost']:.2f}" == row["cost"]
        assert f"{team['idle_cost']:.2f}" == row["idle_cost"]
