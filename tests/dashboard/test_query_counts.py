"""No page runs a query per row: each page's query count stays the same when the fleet gains
teams, projects, nodes, GPUs, jobs, rollup rows and findings (an N+1 shows as growth)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.conftest import PASSWORD
from tests.dashboard.factories import H100, dash_data_build
from tests.dashboard.test_pages import _pages

pytestmark = pytest.mark.django_db


def _more_of_everything(data, *, n: int) -> None:
    """``n`` more teams, each with a project, a node of two GPUs, a job holding both for the
    whole window (hourly, daily and 5-minute rows like the factory's) and an open finding."""
    from apps.fleet.models import Gpu, Node
    from apps.telemetry.models import AllocationGpuHourly, GpuRollup5m, UsageDaily, UsageHourly
    from apps.tenancy.models import Allocation, AllocationGpu, Project, Team

    east = data.clusters[0]
    start_ts = int(data.job_a1.start.timestamp())
    end_ts = int(data.now.timestamp()) - 60
    for i in range(n):
        team = Team.objects.create(slug=f"more-{i}", name=f"More {i}", cost_center=f"CC-M{i}")
        project = Project.objects.create(team=team, slug=f"more-{i}-p", name=f"More {i} P")
        node = Node.objects.create(
            cluster=east, hostname=f"gpu-more-{i:02d}", last_seen_at=data.now
        )
        gpus = [
            Gpu.objects.create(
                uuid=f"GPU-more-{i}-{index}",
                node=node,
                index=index,
                model_name=H100,
                mem_total_mib=81559,
                first_seen_at=data.job_a1.start,
                last_seen_at=data.now,
            )
            for index in range(2)
        ]
        job = Allocation.objects.create(
            source="slurm",
            external_id=f"slurm:9{i:03d}",
            project=project,
            user_name="bob",
            start=data.job_a1.start,
            end=None,
        )
        AllocationGpu.objects.bulk_create(AllocationGpu(allocation=job, gpu=g) for g in gpus)
        hourly, rollups, daily = [], [], {}
        for g in gpus:
            for hour in range(start_ts, end_ts, 3600):
                secs = float(min(3600, end_ts - hour))
                hourly.append(
                    AllocationGpuHourly(
                        allocation=job,
                        gpu=g,
                        hour=hour,
                        allocated_s=secs,
                        observed_s=secs,
                        busy_s=secs / 2,
                        idle_s=0.0,
                        mem_held_idle_s=0.0,
                    )
                )
                day = dt.datetime.fromtimestamp(hour, tz=dt.UTC).date()
                daily[day] = daily.get(day, 0.0) + secs
            for bucket in range(start_ts, end_ts - end_ts % 300, 300):
                rollups.append(
                    GpuRollup5m(
                        gpu=g,
                        bucket=bucket,
                        samples=30,
                        covered_s=300.0,
                        missing_s=0.0,
                        allocated_s=300.0,
                        busy_s=150.0,
                        idle_s=0.0,
                        mem_held_idle_s=0.0,
                        util_mean=50.0,
                        util_max=50.0,
                        sm_active_mean=0.5,
                        mem_used_mean_mib=30000.0,
                        mem_used_max_mib=30000.0,
                        power_mean_w=300.0,
                        energy_j=90000.0,
                        activity_source="util",
                    )
                )
        AllocationGpuHourly.objects.bulk_create(hourly)
        per_hour: dict[int, float] = {}
        for row in hourly:
            per_hour[row.hour] = per_hour.get(row.hour, 0.0) + row.allocated_s
        UsageHourly.objects.bulk_create(
            UsageHourly(
                hour=hour,
                project=project,
                cluster=east,
                gpu_model=H100,
                allocated_s=secs,
                observed_s=secs,
                busy_s=secs / 2,
                idle_s=0.0,
                mem_held_idle_s=0.0,
            )
            for hour, secs in per_hour.items()
        )
        GpuRollup5m.objects.bulk_create(rollups)
        UsageDaily.objects.bulk_create(
            UsageDaily(
                day=day,
                team=team,
                project=project,
                cluster=east,
                gpu_model=H100,
                allocated_s=secs,
                observed_s=secs,
                busy_s=secs / 2,
                idle_s=0.0,
                mem_held_idle_s=0.0,
            )
            for day, secs in daily.items()
        )
        _finding(job=job, now=data.now)


def _finding(*, job, now) -> None:
    try:
        from apps.waste.models import Finding
    except ImportError:
        return
    Finding.objects.create(
        rule=Finding._meta.get_field("rule").choices[0][0],
        subject=f"alloc:{job.pk}",
        allocation=job,
        project=job.project,
        started=now - dt.timedelta(hours=3),
        last_seen=now,
        detected_at=now,
        wasted_gpu_hours=3.0,
        wasted_cost="5.00",
        severity="warning",
    )


def _counts(client, urls: dict[str, str]) -> dict[str, int]:
    counts = {}
    for name, url in urls.items():
        assert client.get(url).status_code == 200, name  # warm: session, first-use lookups
        with CaptureQueriesContext(connection) as queries:
            response = client.get(url)
        assert response.status_code == 200, name
        counts[name] = len(queries.captured_queries)
    return counts


@pytest.mark.parametrize("role", ["admin", "member"])
def test_page_query_counts_do_not_grow_with_the_fleet(client, personas, role):
    data = dash_data_build(personas)
    _finding(job=data.job_a1, now=data.now)
    assert client.login(username=role, password=PASSWORD)
    member_pages = {"overview", "teams", "projects", "team-a", "project-a1", "job-a1", "gpu-a1"}
    urls = {
        name: url for name, url in _pages(data).items() if role == "admin" or name in member_pages
    }
    before = _counts(client, urls)
    _more_of_everything(data, n=3)
    after = _counts(client, urls)
    assert after == before
    # And what they are now, so a new query per page is a decision, not an accident.
    assert max(before.values()) <= 40, before
