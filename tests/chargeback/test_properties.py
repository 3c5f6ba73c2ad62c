"""Property: whatever the allocations, hourly rows, rate changes and billing time zone, every
row costs its allocated GPU-hours times the rate in force for each hour, rounded to the cent
once, and the total is the sum of the rows to the cent (CSV included)."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections import defaultdict
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

import pytest
from django.db import transaction
from django.test import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps.chargeback.export import statement_csv_write
from apps.chargeback.models import Rate
from apps.chargeback.selectors import BillingMonth, statement_compute
from apps.chargeback.services import rate_set
from apps.telemetry.models import AllocationGpuHourly
from tests.chargeback.factories import allocation_make, capacity_make, cluster_make, gpu_make, ts

pytestmark = pytest.mark.django_db
OCT = BillingMonth(2026, 10)
CENT = Decimal("0.01")
FIRST_HOUR = ts("2026-09-30T12:00")  # a little either side of October in any zone
LAST_HOUR = ts("2026-11-01T12:00")
LABEL = {"h100": "NVIDIA H100", "a100": "NVIDIA A100"}

rates = st.lists(
    st.tuples(
        st.sampled_from(["h100", "a100"]),
        st.sampled_from([None, "beta"]),
        st.dates(dt.date(2026, 9, 1), dt.date(2026, 11, 2)),
        st.decimals(min_value=0, max_value=50, places=4),
    ),
    max_size=8,
)
hourly = st.lists(
    st.tuples(
        st.integers(0, 2),  # project
        st.integers(0, 2),  # gpu: H100 on alpha, A100 on beta, 3g MIG instance of the H100
        st.integers(0, (LAST_HOUR - FIRST_HOUR) // 3600),
        st.integers(0, 3600),  # allocated seconds
        st.integers(0, 100),  # busy percent of allocated
        st.integers(0, 100),  # idle percent of allocated
    ),
    max_size=40,
    unique_by=lambda row: (row[0], row[1], row[2]),
)


def _in_force(rate_list, *, model, cluster, day) -> Decimal:
    def newest(where):
        # rate_set replaces the price of an existing (model, cluster, day): the last one wins.
        found = {d: p for m, c, d, p in rate_list if m == model and c == where and d <= day}
        return found[max(found)] if found else None

    price = newest(cluster) if cluster else None
    if price is None:
        price = newest(None)
    return price if price is not None else Decimal(0)


def test_rows_cost_hours_times_rate_and_sum_to_total(personas):
    alpha, beta = cluster_make("alpha"), cluster_make("beta")
    h100 = gpu_make(cluster=alpha)
    gpus = [
        (h100, "h100", None, Decimal(1)),
        (gpu_make(model="NVIDIA A100-SXM4-80GB", cluster=beta), "a100", "beta", Decimal(1)),
        (
            gpu_make(cluster=alpha, mig_parent=h100, mig_profile="3g.40gb"),
            "h100",
            None,
            Decimal(3) / Decimal(7),
        ),
    ]
    projects = [personas.project_a1, personas.project_a2, personas.project_b1]
    allocations = [
        allocation_make(project=p, gpus=[g for g, *_ in gpus], start=FIRST_HOUR) for p in projects
    ]

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        rate_list=rates,
        rows=hourly,
        zone=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]),
        spread=st.booleans(),
        unallocated=st.integers(0, 86400),
    )
    def check(rate_list, rows, zone, spread, unallocated):
        with (
            override_settings(
                FLOPWATCH_BILLING_TIME_ZONE=zone, FLOPWATCH_SPREAD_UNALLOCATED=spread
            ),
            transaction.atomic(),
        ):
            Rate.objects.all().delete()
            for model, cluster, day, price in rate_list:
                rate_set(model=model, price=price, effective_from=day, cluster_slug=cluster)
            AllocationGpuHourly.objects.bulk_create(
                AllocationGpuHourly(
                    allocation=allocations[p],
                    gpu=gpus[g][0],
                    hour=FIRST_HOUR + 3600 * h,
                    allocated_s=a,
                    observed_s=a,
                    busy_s=a * busy // 100,
                    idle_s=a * idle // 100,
                    mem_held_idle_s=0,
                )
                for p, g, h, a, busy, idle in rows
            )
            if unallocated:
                capacity_make(day=dt.date(2026, 10, 9), unallocated_s=unallocated, cluster=alpha)

            statement = statement_compute(month=OCT)

            # Independently: seconds x the rate in force on the hour's local day.
            tz = ZoneInfo(zone)
            exact: dict[tuple, Decimal] = defaultdict(Decimal)
            seconds: dict[tuple, int] = defaultdict(int)
            for p, g, h, a, _, _ in rows:
                start = dt.datetime.fromtimestamp(FIRST_HOUR + 3600 * h, tz=tz)
                if (start.year, start.month) != (2026, 10):
                    continue
                _gpu, model, cluster, fraction = gpus[g]
                rate = _in_force(rate_list, model=model, cluster=cluster, day=start.date())
                key = (projects[p].team.name, projects[p].name, LABEL[model])
                exact[key] += Decimal(a) * rate * fraction / 3600
                seconds[key] += a
            usage = {
                (r.team, r.project, r.gpu_model): r for r in statement.rows if r.kind == "usage"
            }
            assert set(usage) == set(seconds)
            for key, row in usage.items():
                assert row.cost == exact[key].quantize(CENT, rounding=ROUND_HALF_UP), key
                assert row.allocated_gpu_hours == (Decimal(seconds[key]) / 3600).quantize(
                    Decimal("0.000001"), rounding=ROUND_HALF_UP
                )
                # ... and the row's own hours x its (effective) rate, to the cent.
                slack = CENT / 2 + (row.allocated_gpu_hours + row.rate) * Decimal("0.000001")
                assert abs(row.allocated_gpu_hours * row.rate - row.cost) <= slack, row

            for row in statement.rows:
                assert row.cost == row.cost.quantize(CENT)
            total = statement.totals()
            assert total.cost == sum((r.cost for r in statement.rows), Decimal(0))
            if spread and any(r.cost > 0 for r in usage.values()):
                assert not [r for r in statement.rows if r.kind == "platform"]

            buffer = io.StringIO()
            statement_csv_write(statement=statement, out=buffer)
            *body, last = list(csv.DictReader(io.StringIO(buffer.getvalue())))
            assert last["team"] == "TOTAL"
            assert Decimal(last["cost"]) == sum((Decimal(r["cost"]) for r in body), Decimal(0))
            assert Decimal(last["idle_cost"]) == sum(
                (Decimal(r["idle_cost"]) for r in body), Decimal(0)
            )
            transaction.set_rollback(True)

    check()
