"""Monthly statements: rows, rates in force, billing time zone, unallocated capacity, month
close and reopen."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from apps.chargeback.models import MonthClose
from apps.chargeback.selectors import (
    BillingMonth,
    MonthError,
    cents_apportion,
    statement_compute,
    statement_for_month,
)
from apps.chargeback.services import MonthCloseError, month_close, month_reopen, rate_set
from tests.chargeback.factories import (
    allocation_make,
    capacity_make,
    cluster_make,
    gpu_make,
    hourly_make,
    hours_make,
    ts,
)

pytestmark = pytest.mark.django_db
OCT = BillingMonth(2026, 10)
AFTER_OCT = dt.datetime(2026, 11, 5, tzinfo=dt.UTC)


def _rate(model: str, price: str, day: str, cluster: str | None = None) -> None:
    rate_set(
        model=model,
        price=Decimal(price),
        effective_from=dt.date.fromisoformat(day),
        cluster_slug=cluster,
    )


def _by_key(statement):
    return {(row.team, row.project, row.gpu_model): row for row in statement.rows}


def test_month_parse():
    assert BillingMonth.parse("2026-10") == OCT
    assert str(OCT.next()) == "2026-11"
    assert str(BillingMonth(2026, 1).previous()) == "2025-12"
    for bad in ("2026-13", "2026-1", "26-10", "october", ""):
        with pytest.raises(MonthError):
            BillingMonth.parse(bad)


def test_rows_per_team_project_model(personas):
    _rate("h100", "4.00", "2026-01-01")
    _rate("a100", "2.00", "2026-01-01")
    h100, a100 = gpu_make(), gpu_make(model="NVIDIA A100-SXM4-80GB")
    start = ts("2026-10-02T00:00")
    job = allocation_make(project=personas.project_a1, gpus=[h100, a100], start=start)
    hours_make(allocation=job, gpu=h100, first=start, count=10, busy_s=2700, idle_s=0)
    hours_make(allocation=job, gpu=a100, first=start, count=4, busy_s=0, idle_s=3600)
    other = allocation_make(project=personas.project_b1, gpus=[h100], start=start)
    hourly_make(allocation=other, gpu=h100, hour=ts("2026-10-20T00:00"), allocated_s=1800)
    # Outside the month: not billed in October.
    hourly_make(allocation=job, gpu=h100, hour=ts("2026-11-01T00:00"))
    hourly_make(allocation=job, gpu=h100, hour=ts("2026-09-30T23:00"))

    statement = statement_compute(month=OCT)
    rows = _by_key(statement)
    assert set(rows) == {
        ("Team A", "Project A1", "NVIDIA H100"),
        ("Team A", "Project A1", "NVIDIA A100"),
        ("Team B", "Project B1", "NVIDIA H100"),
    }
    h = rows[("Team A", "Project A1", "NVIDIA H100")]
    assert h.allocated_gpu_hours == Decimal(10)
    assert h.busy_gpu_hours == Decimal("7.5")
    assert h.efficiency_pct == Decimal("75.0")
    assert (h.rate, h.cost, h.idle_cost, h.busy_cost) == (
        Decimal("4.00"),
        Decimal("40.00"),
        Decimal("0.00"),
        Decimal("30.00"),
    )
    a = rows[("Team A", "Project A1", "NVIDIA A100")]
    assert (a.cost, a.idle_gpu_hours, a.idle_cost, a.efficiency_pct) == (
        Decimal("8.00"),
        Decimal(4),
        Decimal("8.00"),
        Decimal("0.0"),
    )
    assert rows[("Team B", "Project B1", "NVIDIA H100")].cost == Decimal("2.00")
    assert statement.totals().cost == Decimal("50.00")
    assert h.cost_center == "CC-A"


def test_rate_change_mid_month_splits_cost(personas):
    _rate("h100", "4.00", "2026-01-01")
    _rate("h100", "6.00", "2026-10-16")
    gpu = gpu_make()
    job = allocation_make(project=personas.project_a1, gpus=[gpu], start=ts("2026-10-15T00:00"))
    # 24 hours on the 15th at 4.00 and 24 on the 16th at 6.00.
    hours_make(allocation=job, gpu=gpu, first=ts("2026-10-15T00:00"), count=48, idle_s=600)
    (row,) = statement_compute(month=OCT).rows
    assert row.allocated_gpu_hours == Decimal(48)
    assert row.cost == Decimal("240.00")  # 24 x 4 + 24 x 6
    assert row.mixed_rates
    assert row.rate == Decimal("5.000000")  # effective (weighted) rate
    assert row.idle_cost == Decimal("40.00")  # 48 x 600 s = 8 h: 4 h x 4 + 4 h x 6


def test_cluster_override_and_mig_fraction(personas):
    _rate("h100", "7.00", "2026-01-01")
    beta = cluster_make("beta")
    _rate("h100", "3.50", "2026-01-01", cluster="beta")
    whole = gpu_make(cluster=beta)
    parent = gpu_make(cluster=cluster_make("alpha"))
    mig = gpu_make(cluster=parent.node.cluster, mig_parent=parent, mig_profile="1g.10gb")
    start = ts("2026-10-05T00:00")
    job = allocation_make(project=personas.project_a1, gpus=[whole], start=start)
    hours_make(allocation=job, gpu=whole, first=start, count=2)
    small = allocation_make(project=personas.project_a2, gpus=[mig], start=start)
    hours_make(allocation=small, gpu=mig, first=start, count=7)
    rows = _by_key(statement_compute(month=OCT))
    assert rows[("Team A", "Project A1", "NVIDIA H100")].cost == Decimal("7.00")
    mig_row = rows[("Team A", "Project A2", "NVIDIA H100")]
    assert mig_row.cost == Decimal("7.00")  # 7 h of a 1/7 instance at 7.00
    assert mig_row.rate == Decimal(1)


def test_billing_time_zone_moves_the_month_boundary(personas, settings):
    settings.FLOPWATCH_BILLING_TIME_ZONE = "America/New_York"  # UTC-4 in October
    _rate("h100", "1.00", "2026-01-01")
    _rate("h100", "2.00", "2026-10-10")  # from local midnight: 04:00 UTC
    gpu = gpu_make()
    job = allocation_make(project=personas.project_a1, gpus=[gpu], start=ts("2026-09-30T00:00"))
    hourly_make(allocation=job, gpu=gpu, hour=ts("2026-10-01T03:00"))  # still September
    hourly_make(allocation=job, gpu=gpu, hour=ts("2026-10-01T04:00"))  # October, 1.00
    hourly_make(allocation=job, gpu=gpu, hour=ts("2026-10-10T03:00"))  # Oct 9 local, 1.00
    hourly_make(allocation=job, gpu=gpu, hour=ts("2026-10-10T04:00"))  # Oct 10 local, 2.00
    hourly_make(allocation=job, gpu=gpu, hour=ts("2026-11-01T03:00"))  # Oct 31 local (EDT)
    hourly_make(allocation=job, gpu=gpu, hour=ts("2026-11-01T04:00"))  # Nov 1 local
    (row,) = statement_compute(month=OCT).rows
    assert row.allocated_gpu_hours == Decimal(4)
    assert row.cost == Decimal("6.00")
    (sept,) = statement_compute(month=BillingMonth(2026, 9)).rows
    assert sept.allocated_gpu_hours == Decimal(1)


def test_unallocated_capacity_is_a_platform_row(personas):
    _rate("h100", "2.00", "2026-01-01")
    gpu = gpu_make()
    job = allocation_make(project=personas.project_a1, gpus=[gpu], start=ts("2026-10-01T00:00"))
    hours_make(allocation=job, gpu=gpu, first=ts("2026-10-01T00:00"), count=3)
    capacity_make(day=dt.date(2026, 10, 3), unallocated_s=36_000)
    capacity_make(day=dt.date(2026, 11, 1), unallocated_s=36_000)  # next month
    statement = statement_compute(month=OCT)
    platform = statement.rows[-1]
    assert (platform.kind, platform.team, platform.project) == (
        "platform",
        "platform",
        "unallocated capacity",
    )
    assert platform.allocated_gpu_hours == Decimal(10)
    assert platform.cost == Decimal("20.00")
    assert statement.totals().cost == Decimal("26.00")


def test_spread_unallocated_over_teams_by_cost(personas, settings):
    settings.FLOPWATCH_SPREAD_UNALLOCATED = True
    _rate("h100", "1.00", "2026-01-01")
    gpu = gpu_make()
    start = ts("2026-10-01T00:00")
    for project, hours in ((personas.project_a1, 1), (personas.project_b1, 2)):
        job = allocation_make(project=project, gpus=[gpu], start=start)
        hours_make(allocation=job, gpu=gpu, first=start, count=hours)
    capacity_make(day=dt.date(2026, 10, 3), unallocated_s=3600)  # 1.00 to share 1:2
    statement = statement_compute(month=OCT)
    shares = {row.team: row.cost for row in statement.rows if row.kind == "share"}
    assert shares == {"Team A": Decimal("0.33"), "Team B": Decimal("0.67")}
    assert not [row for row in statement.rows if row.kind == "platform"]
    assert statement.totals().cost == Decimal("4.00")


def test_cents_apportion_sums_exactly():
    parts = cents_apportion(total=Decimal("1.00"), weights=[Decimal(1)] * 3)
    assert parts == [Decimal("0.34"), Decimal("0.33"), Decimal("0.33")]
    parts = cents_apportion(
        total=Decimal("10.07"), weights=[Decimal("3.3"), Decimal("0"), Decimal("7")]
    )
    assert sum(parts) == Decimal("10.07")
    assert parts[1] == 0


def test_closed_month_does_not_move(personas):
    _rate("h100", "4.00", "2026-01-01")
    gpu = gpu_make()
    start = ts("2026-10-10T00:00")
    job = allocation_make(project=personas.project_a1, gpus=[gpu], start=start)
    hours_make(allocation=job, gpu=gpu, first=start, count=5)
    close, created = month_close(month=OCT, user=personas.finance, now=AFTER_OCT)
    assert created
    assert month_close(month=OCT, user=personas.finance, now=AFTER_OCT) == (close, False)
    before = statement_for_month(month=OCT)
    assert before.is_closed
    assert before.totals().cost == Decimal("20.00")

    # Late data and a new rate arrive after the close.
    hours_make(allocation=job, gpu=gpu, first=ts("2026-10-20T00:00"), count=5)
    _rate("h100", "9.00", "2026-10-01")
    after = statement_for_month(month=OCT)
    assert [row.to_json() for row in after.rows] == [row.to_json() for row in before.rows]
    assert statement_compute(month=OCT).totals().cost == Decimal("90.00")

    with pytest.raises(MonthCloseError, match="reason"):
        month_reopen(month=OCT, user=personas.admin, reason="  ")
    reopened_at = AFTER_OCT + dt.timedelta(days=1)
    reopened = month_reopen(
        month=OCT, user=personas.admin, reason="late Slurm accounting", now=reopened_at
    )
    assert (reopened.reopened_by, reopened.reopened_at, reopened.reopen_reason) == (
        personas.admin,
        reopened_at,
        "late Slurm accounting",
    )
    live = statement_for_month(month=OCT)
    assert not live.is_closed
    assert live.totals().cost == Decimal("90.00")
    with pytest.raises(MonthCloseError, match="not closed"):
        month_reopen(month=OCT, user=personas.admin, reason="again")

    # Closing again freezes the new figures and keeps the history.
    month_close(month=OCT, user=personas.finance, now=reopened_at)
    assert statement_for_month(month=OCT).totals().cost == Decimal("90.00")
    assert MonthClose.objects.filter(month=OCT.first_day).count() == 2


def test_a_month_in_progress_cannot_be_closed(personas):
    with pytest.raises(MonthCloseError, match="has not ended"):
        month_close(month=OCT, user=personas.finance, now=dt.datetime(2026, 10, 31, tzinfo=dt.UTC))
