"""``efficiency_by`` reads whole UTC days from ``UsageDaily`` and only the partial days at the
range's ends from the hourly rows: its answers must equal an hour-by-hour computation over
``AllocationGpuHourly``, to the cent, for ranges with partial edge days, allocations crossing
day boundaries, one still open, a MIG instance, two clusters and a price change mid-range.

The rollups are the real ones, run over raw samples (so ``UsageDaily`` is what production
would hold, not hand-written rows).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.chargeback.selectors import RateLookup
from apps.fleet.models import Cluster, Gpu, Node
from apps.telemetry.models import AllocationGpuHourly, UsageDaily, UsageHourly
from apps.telemetry.rollups import rollups_run_pending
from apps.telemetry.selectors import efficiency_by
from apps.tenancy.models import Project
from tests.telemetry.test_rollup_helpers import allocate, at, fleet, mig_instance, samples

pytestmark = pytest.mark.django_db

DAY = 86400
HOUR = 3600
NOW_OFFSET = 3 * DAY + 5 * HOUR + 20 * 60  # day 3, 05:20
A100 = "NVIDIA A100-SXM4-80GB"


def _activity(gpu_id: int):
    # Activity changes every hour (and per GPU), with idle stretches holding memory.
    def util(offset: int) -> float:
        step = (offset // HOUR + 3 * gpu_id) % 7
        return 0.0 if step in (2, 5) else 12.5 * step + 7.3

    return util


@pytest.fixture
def world(personas, settings):
    from apps.chargeback.services import rate_set

    # The data is from 2025: keep its hourly rows "within retention" whatever today's date.
    settings.FLOPWATCH_HOURLY_RETENTION_DAYS = 100 * 365

    # The H100 price changes on day 2 (a day read from UsageDaily is priced on its own date);
    # the west cluster has its own A100 price.
    rate_set(model="h100", price=Decimal("4.00"), effective_from=dt.date(2025, 1, 1))
    rate_set(model="h100", price=Decimal("4.40"), effective_from=at(2 * DAY).date())
    west = Cluster.objects.create(slug="west", name="West")
    rate_set(model="a100", price=Decimal("2.10"), effective_from=dt.date(2025, 1, 1))
    rate_set(
        model="a100", price=Decimal("1.70"), effective_from=dt.date(2025, 1, 1), cluster_slug="west"
    )
    gpu0, gpu1, gpu2 = fleet(gpus=3, interval=60)
    mig = mig_instance(parent=gpu2, index=1, profile="3g.40gb")
    node = Node.objects.create(cluster=west, hostname="west-1", sample_interval_s=60)
    a100 = Gpu.objects.create(
        uuid="GPU-west-1-0", node=node, index=0, model_name=A100, first_seen_at=at(0)
    )
    for gpu in (gpu0, gpu1, mig, a100):
        samples(
            gpu,
            range(0, NOW_OFFSET, 60),
            util_pct=_activity(gpu.pk),
            mem_used_mib=lambda o: 30000.0 if (o // HOUR) % 3 else 512.0,
        )
    # Allocations starting and ending mid-hour, across one or two midnights; one still open.
    allocate(
        external_id="job-a",
        gpus=[gpu0],
        start=20 * HOUR + 30 * 60,
        end=2 * DAY + 3 * HOUR + 10 * 60,
        proj=personas.project_a1,
    )
    allocate(
        external_id="job-b",
        gpus=[gpu1],
        start=DAY - 2 * HOUR - 15 * 60,
        end=None,
        proj=personas.project_b1,
    )
    allocate(
        external_id="job-c",
        gpus=[mig],
        start=6 * HOUR + 45 * 60,
        end=2 * DAY + 12 * HOUR + 5 * 60,
        proj=personas.project_a2,
    )
    allocate(
        external_id="job-d",
        gpus=[a100],
        start=DAY + 23 * HOUR + 50 * 60,
        end=None,
        proj=personas.project_a1,
    )
    allocate(
        external_id="job-e",
        gpus=[gpu0],
        start=2 * DAY + 4 * HOUR,
        end=3 * DAY + 2 * HOUR + 1,
        proj=personas.project_b1,
    )
    rollups_run_pending(now=at(NOW_OFFSET))
    return personas


def _hour_by_hour(*, group: str, start, end, projects=None, cluster=None, gpu_model=None):
    """Every hourly row starting in [start, end), each priced on its own: the definition."""
    rates = RateLookup.load()
    lo, hi = start.timestamp(), end.timestamp()
    rows = AllocationGpuHourly.objects.select_related(
        "allocation__project__team", "gpu__node__cluster", "gpu__mig_parent"
    )
    seconds = defaultdict(lambda: [0.0] * 5)
    money = defaultdict(lambda: [Decimal(0), Decimal(0)])
    for row in rows:
        if not lo <= row.hour < hi:
            continue
        gpu = row.gpu
        model = gpu.mig_parent.model_name if gpu.mig_parent else gpu.model_name
        if projects is not None and row.allocation.project not in projects:
            continue
        if cluster and gpu.node.cluster.slug != cluster:
            continue
        if gpu_model and model != gpu_model:
            continue
        key = {
            "team": row.allocation.project.team.slug,
            "project": row.allocation.project.slug,
            "allocation": row.allocation_id,
            "gpu": gpu.uuid,
        }[group]
        rate = rates.gpu_rate(
            model_name=model,
            mig_profile=gpu.mig_profile,
            cluster_id=gpu.node.cluster_id,
            day=dt.datetime.fromtimestamp(row.hour, tz=dt.UTC).date(),
        )
        values = (row.allocated_s, row.observed_s, row.busy_s, row.idle_s, row.mem_held_idle_s)
        for i, value in enumerate(values):
            seconds[key][i] += value
        money[key][0] += Decimal(repr(row.allocated_s)) * rate / 3600
        money[key][1] += Decimal(repr(row.idle_s)) * rate / 3600
    return {
        key: (
            [v / 3600 for v in seconds[key]],
            money[key][0].quantize(Decimal("0.01")),
            money[key][1].quantize(Decimal("0.01")),
        )
        for key in seconds
    }


def _assert_same(rows, expected) -> None:
    assert {r.key for r in rows} == set(expected)
    for row in rows:
        hours, cost, idle_cost = expected[row.key]
        got = [
            row.allocated_gpu_hours,
            row.observed_gpu_hours,
            row.busy_gpu_hours,
            row.idle_gpu_hours,
            row.memory_held_idle_gpu_hours,
        ]
        # Allocated and idle seconds are whole seconds: exact. Busy is activity x seconds, a
        # float summed in another order (as SQL SUM may do any day): equal to rounding.
        assert got[0] == hours[0] and got[3] == hours[3], row.key
        assert got == pytest.approx(hours, rel=1e-12, abs=1e-12), row.key
        assert (row.cost, row.idle_cost) == (cost, idle_cost), row.key
        if hours[1] > 0:
            assert row.efficiency == pytest.approx(hours[2] / hours[1], rel=1e-12)


# name: (start, end, whether UsageDaily answers some of it for teams and projects)
RANGES = {
    # partial edge days at both ends around two whole days; nothing is held before 05:30 on
    # day 0, so that day's part is read from UsageDaily too, while day 3's is hour by hour
    "edges": (5 * HOUR + 30 * 60, 3 * DAY + 4 * HOUR + 45 * 60, True),
    # exactly whole days
    "whole": (DAY, 3 * DAY, True),
    # the last 24 hours up to now: two partial days, the last one (nothing after now) daily
    "24h": (NOW_OFFSET - DAY, NOW_OFFSET, True),
    # one whole day and a partial one after it, ending inside an hour
    "day+": (DAY, 2 * DAY + 7 * HOUR + 59, True),
    # a few hours across a midnight: two partial days, both hour by hour
    "midnight": (22 * HOUR + 10 * 60, DAY + 3 * HOUR, False),
    # the whole history and beyond now
    "all": (-DAY, 5 * DAY, True),
}


def test_rollup_keeps_usage_daily_equal_to_the_hourly_sums_with_mig_apart(world):
    _ = world
    sums = defaultdict(lambda: [0.0] * 5)
    for row in AllocationGpuHourly.objects.select_related("allocation__project", "gpu__node"):
        gpu = row.gpu
        model = gpu.mig_parent.model_name if gpu.mig_parent_id else gpu.model_name
        day = dt.datetime.fromtimestamp(row.hour, tz=dt.UTC).date()
        key = (day, row.allocation.project_id, gpu.node.cluster_id, model, gpu.mig_profile)
        values = (row.allocated_s, row.observed_s, row.busy_s, row.idle_s, row.mem_held_idle_s)
        for i, value in enumerate(values):
            sums[key][i] += value
    daily = {
        (u.day, u.project_id, u.cluster_id, u.gpu_model, u.mig_profile): [
            u.allocated_s,
            u.observed_s,
            u.busy_s,
            u.idle_s,
            u.mem_held_idle_s,
        ]
        for u in UsageDaily.objects.all()
    }
    assert set(daily) == set(sums)
    for key, values in sums.items():
        assert daily[key] == pytest.approx(values, rel=1e-12), key
    assert {k[4] for k in daily} == {"", "3g.40gb"}
    assert len({k[0] for k in daily}) == 4  # days 0-3
    # UsageHourly: the same sums per hour.
    per_hour = defaultdict(lambda: [0.0] * 5)
    for row in AllocationGpuHourly.objects.select_related("allocation", "gpu__node"):
        gpu = row.gpu
        model = gpu.mig_parent.model_name if gpu.mig_parent_id else gpu.model_name
        key = (row.hour, row.allocation.project_id, gpu.node.cluster_id, model, gpu.mig_profile)
        values = (row.allocated_s, row.observed_s, row.busy_s, row.idle_s, row.mem_held_idle_s)
        for i, value in enumerate(values):
            per_hour[key][i] += value
    hourly = {
        (u.hour, u.project_id, u.cluster_id, u.gpu_model, u.mig_profile): [
            u.allocated_s,
            u.observed_s,
            u.busy_s,
            u.idle_s,
            u.mem_held_idle_s,
        ]
        for u in UsageHourly.objects.all()
    }
    assert set(hourly) == set(per_hour)
    for key, values in per_hour.items():
        assert hourly[key] == pytest.approx(values, rel=1e-12), key


def test_pruning_hourly_rows_prunes_their_usage_hourly_rows(world, settings):
    from apps.telemetry.rollups import rollups_prune

    _ = world
    settings.FLOPWATCH_HOURLY_RETENTION_DAYS = 2
    rollups_prune(now=at(3 * DAY + 12 * HOUR))  # cut: day 1, 12:00
    cut = at(DAY + 12 * HOUR).timestamp()
    assert not AllocationGpuHourly.objects.filter(hour__lt=cut).exists()
    assert not UsageHourly.objects.filter(hour__lt=cut).exists()
    assert UsageHourly.objects.filter(hour__gte=cut).exists()


def _check_ranges() -> None:
    for name, (lo, hi, daily) in RANGES.items():
        for group in ("team", "project", "allocation", "gpu"):
            start, end = at(lo), at(hi)
            with CaptureQueriesContext(connection) as queries:
                rows = efficiency_by(group=group, start=start, end=end)
            assert rows, (name, group)
            _assert_same(rows, _hour_by_hour(group=group, start=start, end=end))
            sql = " ".join(q["sql"] for q in queries.captured_queries)
            # UsageDaily answers for teams and projects, never for jobs or GPUs.
            assert (UsageDaily._meta.db_table in sql) == (group in ("team", "project") and daily), (
                name,
                group,
            )


def test_efficiency_by_equals_the_hour_by_hour_computation(world):
    _ = world
    _check_ranges()


def test_partial_days_older_than_hourly_retention_are_read_hour_by_hour(world, settings):
    _ = world
    # Pruning may have emptied such a day's early hours while its daily rows keep them, so
    # an empty outside part proves nothing there: only whole days come from UsageDaily.
    settings.FLOPWATCH_HOURLY_RETENTION_DAYS = 1
    with CaptureQueriesContext(connection) as queries:
        lo, hi, _daily = RANGES["24h"]
        rows = efficiency_by(group="project", start=at(lo), end=at(hi))
    assert UsageDaily._meta.db_table not in " ".join(q["sql"] for q in queries.captured_queries)
    _assert_same(rows, _hour_by_hour(group="project", start=at(lo), end=at(hi)))
    lo, hi, _daily = RANGES["edges"]
    rows = efficiency_by(group="team", start=at(lo), end=at(hi))
    _assert_same(rows, _hour_by_hour(group="team", start=at(lo), end=at(hi)))


FILTERS = [
    {"cluster": "west"},
    {"cluster": "c1"},
    {"gpu_model": "NVIDIA H100 80GB HBM3"},
    {"gpu_model": A100},
    {"projects": "a1"},
    {"projects": "a2,b1", "cluster": "c1"},
]


def test_filters_give_the_same_answer_both_ways(world):
    _ = world
    lo, hi, _daily = RANGES["edges"]
    for raw in FILTERS:
        filters = dict(raw)
        if "projects" in filters:
            filters["projects"] = Project.objects.filter(slug__in=filters["projects"].split(","))
        for group in ("team", "project"):
            rows = efficiency_by(group=group, start=at(lo), end=at(hi), **filters)
            assert rows, (raw, group)
            _assert_same(rows, _hour_by_hour(group=group, start=at(lo), end=at(hi), **filters))


def test_an_open_allocation_counts_up_to_now_on_the_partial_last_day(world):
    _ = world
    # job-b (b1) is still open: its hours run to 05:20 on day 3, the last one partial.
    rows = efficiency_by(group="project", start=at(DAY), end=at(4 * DAY))
    (b1,) = [r for r in rows if r.key == "b1"]
    expected = _hour_by_hour(group="project", start=at(DAY), end=at(4 * DAY))["b1"]
    assert b1.allocated_gpu_hours == expected[0][0]
    # job-b from 00:00 day 1 to 05:20 day 3, plus job-e from 04:00 day 2 to 02:00:01 day 3
    # (b1's second job, on another GPU).
    assert b1.allocated_gpu_hours * 3600 == (2 * DAY + 5 * HOUR + 20 * 60) + (22 * HOUR + 1)


def test_visibility_querysets_of_any_shape(world):
    personas = world
    lo, hi, _daily = RANGES["edges"]
    # What projects_visible_to returns for a member: DISTINCT over a join, ordered.
    visible = (
        Project.objects.filter(team__memberships__user=personas.member).distinct().order_by("-name")
    )
    for group in ("team", "project", "allocation"):
        rows = efficiency_by(group=group, start=at(lo), end=at(hi), projects=visible)
        assert rows
        expected = _hour_by_hour(
            group=group,
            start=at(lo),
            end=at(hi),
            projects=list(Project.objects.filter(team__slug="team-a")),
        )
        _assert_same(rows, expected)
        assert (
            efficiency_by(group=group, start=at(lo), end=at(hi), projects=Project.objects.none())
            == []
        )
