"""Hand-computed rollup scenarios: every expected number below is worked out by hand from
DESIGN.md's definitions (see the comments); seconds are exact integers."""

from __future__ import annotations

import pytest

from apps.telemetry.models import AllocationGpuHourly, GpuRollup5m, RollupPending
from apps.telemetry.rollups import rollups_run_pending
from tests.telemetry.test_rollup_helpers import (
    NOW,
    T0,
    allocate,
    at,
    fleet,
    hourly,
    project,
    r5,
    samples,
)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True, params=["exact", "grid"])
def rollup_path(request, settings):
    """Every scenario through the exact statement and through the grid path (which takes
    the on-grid buckets and leaves the rest to the exact one)."""
    settings.FLOPWATCH_ROLLUP_GRID_PATH = "never" if request.param == "exact" else "always"


def test_gap_longer_than_two_intervals_is_missing_and_sample_time_spills_over_buckets():
    (gpu,) = fleet(interval=10)  # cap = 20 s
    # 30 samples every 10 s in bucket 0, then silence until 400 (a 110 s gap), one more.
    samples(gpu, range(0, 300, 10), util_pct=50.0, mem_used_mib=2048.0, power_w=300.0)
    samples(gpu, [400], util_pct=50.0, mem_used_mib=2048.0, power_w=300.0)
    result = rollups_run_pending(now=NOW)
    assert result["buckets"] >= 2
    first = r5(gpu, 0)
    # 29 samples x 10 s + the sample at 290 up to 300 (its other 10 s spill into 300..310).
    assert (first.samples, first.covered_s, first.missing_s) == (30, 300, 0)
    assert first.busy_s == pytest.approx(150.0)
    assert first.idle_s == 0
    assert first.activity_source == "util"
    assert first.util_mean == pytest.approx(50.0)
    # Energy is that of the samples taken in the bucket, each for its whole duration.
    assert first.energy_j == pytest.approx(300.0 * 310)
    second = r5(gpu, 300)
    # 10 s spilled from 290, then the last sample at 400 stands for the cap (20 s).
    assert (second.samples, second.covered_s, second.missing_s) == (1, 30, 270)
    assert second.busy_s == pytest.approx(15.0)
    assert RollupPending.objects.count() == 0


def test_allocation_boundaries_inside_buckets_are_cut_to_the_second():
    (gpu,) = fleet(interval=10)
    samples(gpu, range(0, 600, 10), util_pct=100.0, sm_active=0.5, mem_used_mib=0.0)
    allocation = allocate(external_id="job-1", gpus=[gpu], start=155, end=455)
    rollups_run_pending(now=NOW)
    row = hourly(allocation, gpu)
    # 300 s allocated; all of it observed: 145 s in bucket 0, 155 s in bucket 300.
    assert row.allocated_s == 300
    assert row.observed_s == 300
    assert row.busy_s == pytest.approx(150.0)  # sm_active wins over util_pct
    assert row.idle_s == 0
    assert r5(gpu, 0).allocated_s == 145
    assert r5(gpu, 300).allocated_s == 155
    assert r5(gpu, 0).activity_source == "sm_active"


def test_unobserved_allocated_time_is_allocated_but_not_observed():
    (gpu,) = fleet(interval=10)
    samples(gpu, range(0, 100, 10), util_pct=0.0, mem_used_mib=4096.0)  # idle, memory held
    allocation = allocate(external_id="job-1", gpus=[gpu], start=0, end=3600 + 600)
    rollups_run_pending(now=NOW)
    first = hourly(allocation, gpu, 0)
    # Samples 0..90 stand for 10 s each, the last for the cap (20 s): 110 s observed.
    assert (first.allocated_s, first.observed_s) == (3600, 110)
    assert (first.idle_s, first.mem_held_idle_s, first.busy_s) == (110, 110, 0)
    second = hourly(allocation, gpu, 3600)
    assert (second.allocated_s, second.observed_s) == (600, 0)


def test_two_allocations_on_one_gpu_in_one_bucket_each_get_their_full_time():
    (gpu,) = fleet(interval=10)
    samples(gpu, range(0, 300, 10), util_pct=40.0)
    a = allocate(external_id="job-a", gpus=[gpu], start=0, end=200)
    b = allocate(external_id="job-b", gpus=[gpu], start=100, end=300)
    rollups_run_pending(now=NOW)
    row_a, row_b = hourly(a, gpu), hourly(b, gpu)
    assert (row_a.allocated_s, row_a.observed_s) == (200, 200)
    assert (row_b.allocated_s, row_b.observed_s) == (200, 200)
    assert row_a.busy_s == pytest.approx(80.0)
    assert row_b.busy_s == pytest.approx(80.0)
    # The GPU itself was held once: 0..300 is the union.
    assert r5(gpu, 0).allocated_s == 300


def test_mig_instance_uses_gr_engine_active():
    (parent,) = fleet(interval=10)
    from tests.telemetry.test_rollup_helpers import mig_instance

    mig = mig_instance(parent=parent, index=0)
    samples(mig, range(0, 300, 10), util_pct=90.0, gr_engine_active=0.25, mem_used_mib=2000.0)
    allocation = allocate(external_id="mig-job", gpus=[mig], start=0, end=300)
    rollups_run_pending(now=NOW)
    row = r5(mig, 0)
    assert row.busy_s == pytest.approx(75.0)  # 0.25 x 300 s, not 0.9 x 300 s
    assert row.activity_source == "sm_active"
    assert row.sm_active_mean == pytest.approx(0.25)
    assert hourly(allocation, mig).busy_s == pytest.approx(75.0)


def test_gpu_with_util_and_sm_active_prefers_sm_active_and_records_mixed_source():
    (gpu,) = fleet(interval=10)
    # First half of the bucket has DCGM profiling data, second half only NVML utilization.
    samples(gpu, range(0, 150, 10), util_pct=80.0, sm_active=0.2)
    samples(gpu, range(150, 300, 10), util_pct=80.0)
    rollups_run_pending(now=NOW)
    row = r5(gpu, 0)
    assert row.busy_s == pytest.approx(0.2 * 150 + 0.8 * 150)
    assert row.activity_source == "mixed"
    assert row.util_mean == pytest.approx(80.0)


def test_idle_threshold_and_memory_held_idle():
    (gpu,) = fleet(interval=10)
    samples(gpu, range(0, 100, 10), util_pct=0.5, mem_used_mib=2048.0)  # idle, memory held
    samples(gpu, range(100, 200, 10), util_pct=0.5, mem_used_mib=1024.0)  # idle, exactly 1 GiB
    samples(gpu, range(200, 300, 10), util_pct=1.0, mem_used_mib=8192.0)  # 1 % is not idle
    rollups_run_pending(now=NOW)
    row = r5(gpu, 0)
    assert (row.idle_s, row.mem_held_idle_s) == (200, 100)
    assert row.busy_s == pytest.approx(0.005 * 200 + 0.01 * 100)


def test_late_data_is_rerolled_and_changes_the_previous_bucket_too():
    (gpu,) = fleet(interval=10)
    samples(gpu, range(0, 300, 10), util_pct=100.0)
    rollups_run_pending(now=NOW)
    assert r5(gpu, 0).covered_s == 300  # 290 stands for its cap: 10 s here, 10 s beyond
    assert r5(gpu, 300).covered_s == 10
    # An hour-long outage ends; the agent sends what it spooled for 300..600 late.
    samples(gpu, range(300, 600, 10), util_pct=0.0)
    rollups_run_pending(now=NOW)
    assert r5(gpu, 300).covered_s == 300
    assert r5(gpu, 300).busy_s == 0  # the sample at 290 now ends at 300
    assert r5(gpu, 300).samples == 30


def test_closed_allocation_reopened_rerolls_its_span():
    from apps.tenancy.models import Allocation

    (gpu,) = fleet(interval=10)
    samples(gpu, range(0, 1200, 10), util_pct=50.0)
    allocation = allocate(external_id="job-1", gpus=[gpu], start=0, end=600)
    rollups_run_pending(now=NOW)
    assert hourly(allocation, gpu).allocated_s == 600
    # Re-opened, then closed again at 1200: the scheduler marks the span it changes.
    Allocation.objects.filter(pk=allocation.pk).update(end=None)
    from apps.telemetry.pending import rollup_pending_mark_range

    rollup_pending_mark_range(gpu_ids=[gpu.pk], start_ts=T0 + 600, end_ts=T0 + 1200)
    Allocation.objects.filter(pk=allocation.pk).update(
        end=allocation.start.__class__.fromtimestamp(T0 + 1200, tz=allocation.start.tzinfo)
    )
    rollups_run_pending(now=NOW)
    row = hourly(allocation, gpu)
    assert (row.allocated_s, row.observed_s) == (1200, 1200)
    assert row.busy_s == pytest.approx(600.0)
    assert AllocationGpuHourly.objects.count() == 1
    assert GpuRollup5m.objects.filter(gpu=gpu).count() == 5  # 0..1200 and the spill bucket


def test_job_closed_by_grace_after_being_rolled_up_open_loses_the_hours_past_its_end():
    from apps.telemetry.models import AllocationSeen
    from apps.tenancy.services import allocations_close_stale

    (gpu,) = fleet(interval=10)
    samples(gpu, range(0, 600, 10), util_pct=100.0)
    allocation = allocate(external_id="job-1", gpus=[gpu], start=0, end=None)
    AllocationSeen.objects.create(allocation=allocation, last_ts=T0 + 590)
    two_hours_later = at(2 * 3600 + 60)
    rollups_run_pending(now=two_hours_later)
    assert hourly(allocation, gpu, 3600).allocated_s == 3600  # open: held, no data

    assert allocations_close_stale(now=two_hours_later) == 1
    rollups_run_pending(now=two_hours_later)
    assert hourly(allocation, gpu).allocated_s == 600  # the last sample stands for 10 s
    assert not AllocationGpuHourly.objects.filter(allocation=allocation, hour__gt=T0).exists()


def test_job_closed_by_grace_never_rolled_up_open_marks_only_around_its_end():
    from apps.telemetry.models import AllocationSeen
    from apps.tenancy.models import Allocation
    from apps.tenancy.services import allocations_close_stale

    (gpu,) = fleet(interval=10)
    samples(gpu, range(0, 600, 10), util_pct=100.0)
    allocation = Allocation.objects.create(
        source="test", external_id="job-1", project=project(), start=at(0)
    )
    allocation.allocation_gpus.create(gpu=gpu)
    AllocationSeen.objects.create(allocation=allocation, last_ts=T0 + 590)
    marked = RollupPending.objects.count()
    # A history import: the job ended weeks before anything was rolled up.
    assert allocations_close_stale(now=at(30 * 86400)) == 1
    assert RollupPending.objects.count() - marked <= 3
    rollups_run_pending(now=at(30 * 86400))
    assert hourly(allocation, gpu).allocated_s == 600


def test_slow_gpu_held_open_is_cut_right_when_the_tick_recomputes_it_beside_other_work():
    # A node sampling every 500 s (cap 1000 s: a sample reaches two buckets on) beside one
    # sampling every 10 s. The slow GPU's open allocation starts mid-bucket; once its own
    # marks are rolled up, later runs recompute its open hours on the clock alone, while
    # claiming only the fast GPU's buckets: the boundary must still be cut from every
    # sample that reaches it.
    (slow,) = fleet(interval=500, hostname="slow")
    (fast,) = fleet(interval=10, hostname="fast")
    samples(slow, range(80950, 86400, 500), util_pct=50.0, mem_used_mib=2048.0)
    job = allocate(external_id="slow-job", gpus=[slow], start=83420, end=None)
    rollups_run_pending(now=NOW)
    # 82950 lasts until 83450 (30 s inside the job), 83450..85450 are 500 s each, and the
    # newest (85950) stands for the cap, of which 450 s fall inside the hour.
    first = hourly(job, slow, 82800)
    assert (first.allocated_s, first.observed_s, first.busy_s) == (2980, 2980, 1490)

    samples(fast, range(0, 300, 10), util_pct=10.0)
    rollups_run_pending(now=NOW)
    again = hourly(job, slow, 82800)
    assert (again.allocated_s, again.observed_s, again.busy_s) == (2980, 2980, 1490)


def test_late_sample_at_the_end_of_an_hour_keeps_the_hours_earlier_allocations():
    """A late sample near the end of an hour recomputes that hour's rows for its GPU: an
    allocation that ended early in the hour, long before the sample, keeps its row."""
    (gpu,) = fleet(interval=10)
    samples(gpu, range(0, 3600, 10), util_pct=0.0)
    early = allocate(external_id="early", gpus=[gpu], start=0, end=120)
    late = allocate(external_id="late", gpus=[gpu], start=1800, end=3600)
    rollups_run_pending(now=NOW)
    before = hourly(early, gpu)
    assert (before.allocated_s, before.observed_s, before.idle_s) == (120, 120, 120)
    # The agent's spool delivers one more sample, in the hour's last bucket (3295 is off
    # the grid: no sample was stored there).
    samples(gpu, [3295], util_pct=100.0)
    rollups_run_pending(now=NOW)
    after = hourly(early, gpu)
    assert (after.allocated_s, after.observed_s, after.idle_s) == (120, 120, 120)
    assert hourly(late, gpu).allocated_s == 1800
