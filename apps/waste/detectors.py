"""The waste rules, evaluated bucket by bucket from the rollups.

Each allocation has a ``DetectionCursor``: the next 5-minute bucket (and hour, for
``low_efficiency``) to evaluate and the runs in progress. A run is a stretch of consecutive
buckets in which a rule's condition held; once it is long enough it becomes a finding, which
then grows with every further bucket and ends with the first bucket where the condition no
longer holds (or with the allocation). Because a run depends only on the rollup rows and the
order of buckets, never on when detection happened to look, a day of history imported in one
go yields the same findings, start times and totals as the same day arriving live.

A bucket is evaluated only once its data is in: every GPU of the allocation has sent data for a
later bucket and no rollup of it is still pending (see ``allocation_horizon``). A GPU silent
for longer than ``FLOPWATCH_WASTE_LATE_WAIT_S`` stops holding back the allocation's other GPUs
(``silent_gpu`` reports it instead).

Buckets without data (a GPU covered less than half the bucket) are a pause: they neither
extend nor break a run, because missing data is counted separately, never as busy or idle.
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
from collections import defaultdict, namedtuple
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings

from apps.chargeback.selectors import RateLookup
from apps.fleet.models import Gpu
from apps.telemetry.models import AllocationGpuHourly, GpuRollup5m, RollupPending
from apps.tenancy.models import Allocation, Project
from apps.waste.models import Rule
from apps.waste.selectors import HourUsage, ResolvedPolicy

# What detection reads of a 5-minute rollup row; a plain tuple, not a model instance: a
# month of history is hundreds of thousands of rows and building models was most of the time.
BucketRow = namedtuple(
    "BucketRow", "gpu_id bucket covered_s busy_s mem_used_mean_mib mem_used_max_mib"
)

BUCKET_S = 300
HOUR_S = 3600
# Per-bucket state of an allocation -> the rule whose run it extends.
STATE_RULE = {
    "idle": Rule.IDLE_ALLOCATION,
    "mem_idle": Rule.MEMORY_HELD_IDLE,
    "partial": Rule.PARTIAL_USE,
    "oversized": Rule.OVERSIZED_GPU,
}
BUCKET_RULES = tuple(STATE_RULE.values())


def ts_of(moment: dt.datetime) -> int:
    return int(moment.timestamp())


def dt_of(ts: int | float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC)


def bucket_of(ts: int) -> int:
    return ts - ts % BUCKET_S


@dataclass
class GpuInfo:
    """What the rules and prices need of one GPU."""

    id: int
    model_name: str
    mig_profile: str
    cluster_id: int
    mem_total_mib: int | None

    @classmethod
    def of(cls, gpu: Gpu) -> GpuInfo:
        model = gpu.mig_parent.model_name if gpu.mig_parent_id else gpu.model_name
        return cls(gpu.id, model, gpu.mig_profile, gpu.node.cluster_id, gpu.mem_total_mib)


def gpu_bucket_class(*, row: GpuRollup5m | BucketRow, gpu: GpuInfo, policy: ResolvedPolicy) -> str:
    """nodata, idle, idle_mem, light (low use on a large GPU) or busy."""
    if row.covered_s < BUCKET_S / 2:
        return "nodata"
    activity = row.busy_s / row.covered_s
    if activity < policy.idle_activity_pct / 100:
        held = (row.mem_used_mean_mib or 0) > policy.memory_held_mib
        return "idle_mem" if held else "idle"
    if (
        activity <= policy.oversized_activity_pct / 100
        and (row.mem_used_max_mib or 0) <= policy.oversized_memory_mib
        and (gpu.mem_total_mib or 0) >= policy.oversized_large_gpu_mib
    ):
        return "light"
    return "busy"


def allocation_bucket_state(*, classes: dict[int, str], gpu_count: int) -> str | None:
    """The allocation's state in one bucket from its GPUs' classes; None when no data."""
    seen = {gpu: cls for gpu, cls in classes.items() if cls != "nodata"}
    if not seen:
        return None
    idle = [gpu for gpu, cls in seen.items() if cls in ("idle", "idle_mem")]
    if len(idle) == len(seen):
        return "mem_idle" if any(seen[gpu] == "idle_mem" for gpu in idle) else "idle"
    if idle:
        return "partial" if gpu_count > 1 else "busy"
    if all(cls == "light" for cls in seen.values()):
        return "oversized"
    return "busy"


def _threshold_met(rule: str, run: dict, policy: ResolvedPolicy) -> bool:
    minutes = run["n"] * BUCKET_S / 60
    if rule == Rule.IDLE_ALLOCATION:
        return minutes >= policy.idle_minutes
    if rule == Rule.MEMORY_HELD_IDLE:
        return minutes >= policy.memory_held_idle_minutes
    if rule == Rule.PARTIAL_USE:
        return minutes >= policy.partial_use_minutes
    if rule == Rule.OVERSIZED_GPU:
        return run["gpu_s"] >= policy.oversized_min_gpu_hours * HOUR_S
    if rule == Rule.LOW_EFFICIENCY:
        return True
    raise ValueError(f"unknown rule {rule!r}")


class FindingSink:
    """What the walker calls to turn runs into findings (implemented in services)."""

    def open(self, *, rule: str, allocation: Allocation, run: dict) -> int: ...  # pragma: no cover

    def open_project(
        self, *, rule: str, project: Project, run: dict
    ) -> int: ...  # pragma: no cover

    def extend(self, *, finding_id: int, run: dict) -> None: ...  # pragma: no cover

    def close(
        self, *, finding_id: int, run: dict, ended: dt.datetime
    ) -> None: ...  # pragma: no cover


@dataclass
class AllocationWalk:
    """Evaluates one allocation's buckets from its cursor up to a horizon."""

    allocation: Allocation
    gpus: dict[int, GpuInfo]
    policy: ResolvedPolicy
    rates: RateLookup
    sink: FindingSink

    def _cost(self, gpu_id: int, seconds: float, ts: int) -> Decimal:
        gpu = self.gpus[gpu_id]
        rate = self.rates.gpu_rate(
            model_name=gpu.model_name,
            mig_profile=gpu.mig_profile,
            cluster_id=gpu.cluster_id,
            day=dt_of(ts).date(),
        )
        return rate * Decimal(repr(seconds)) / Decimal(HOUR_S)

    @staticmethod
    def _run_new(start: int) -> dict:
        return {
            "start": start, "last": start, "n": 0, "gpu_s": 0.0, "waste_s": 0.0,
            "cost": "0", "gpus": [], "finding": None,
        }  # fmt: skip

    def _run_add(self, run: dict, *, ts: int, span: int, waste: dict[int, float], gpu_s: float):
        run["last"] = ts
        run["end"] = ts + span
        run["n"] += 1
        run["gpu_s"] += gpu_s
        run["waste_s"] += sum(waste.values())
        cost = Decimal(run["cost"]) + sum(
            (self._cost(gpu, seconds, ts) for gpu, seconds in waste.items()), Decimal(0)
        )
        run["cost"] = str(cost)
        run["gpus"] = sorted(set(run["gpus"]) | {gpu for gpu, s in waste.items() if s > 0})

    def _run_step(self, runs: dict, rule: str, run: dict) -> None:
        if run["finding"] is not None:
            self.sink.extend(finding_id=run["finding"], run=run)
        elif _threshold_met(rule, run, self.policy):
            run["finding"] = self.sink.open(rule=rule, allocation=self.allocation, run=run)
        runs[rule] = run

    def _run_break(self, runs: dict, rule: str, *, at: int | None = None) -> None:
        run = runs.pop(rule, None)
        if run and run["finding"] is not None:
            ended = run["end"] if at is None else min(at, run["end"])
            self.sink.close(finding_id=run["finding"], run=run, ended=dt_of(ended))

    def walk_buckets(self, *, state: dict, start: int, horizon: int) -> int:
        """Evaluate buckets [start, horizon); returns the next bucket to evaluate."""
        runs: dict = state.setdefault("runs", {})
        alloc_start = ts_of(self.allocation.start)
        alloc_end = ts_of(self.allocation.end) if self.allocation.end else None
        rows: dict[int, dict[int, BucketRow]] = defaultdict(dict)
        found = GpuRollup5m.objects.filter(
            gpu_id__in=list(self.gpus), bucket__gte=start, bucket__lt=horizon
        ).values_list(*BucketRow._fields)
        for row in map(BucketRow._make, found):
            rows[row.bucket][row.gpu_id] = row
        for bucket in sorted(rows):
            middle = bucket + BUCKET_S // 2
            if middle < alloc_start or (alloc_end is not None and middle >= alloc_end):
                continue
            by_gpu = rows[bucket]
            classes = {
                gpu: gpu_bucket_class(row=row, gpu=self.gpus[gpu], policy=self.policy)
                for gpu, row in by_gpu.items()
            }
            current = allocation_bucket_state(classes=classes, gpu_count=len(self.gpus))
            if current is None:
                continue  # no data: a pause, neither idle nor busy
            rule_now = STATE_RULE.get(current)
            if rule_now is not None and not self.policy.enabled(rule_now):
                rule_now = None
            for rule in list(runs):
                if rule in BUCKET_RULES and rule != rule_now:
                    self._run_break(runs, rule, at=bucket)
            if rule_now is None:
                continue
            if current in ("idle", "mem_idle"):
                waste = {gpu: by_gpu[gpu].covered_s for gpu in classes if classes[gpu] != "nodata"}
                gpu_s = sum(waste.values())
            elif current == "partial":
                waste = {
                    gpu: by_gpu[gpu].covered_s
                    for gpu, cls in classes.items()
                    if cls in ("idle", "idle_mem")
                }
                gpu_s = sum(waste.values())
            else:  # oversized: the unused part of a lightly used large GPU
                waste = {
                    gpu: max(0.0, by_gpu[gpu].covered_s - by_gpu[gpu].busy_s)
                    for gpu, cls in classes.items()
                    if cls == "light"
                }
                gpu_s = sum(by_gpu[gpu].covered_s for gpu, cls in classes.items() if cls == "light")
            run = runs.get(rule_now) or self._run_new(bucket)
            self._run_add(run, ts=bucket, span=BUCKET_S, waste=waste, gpu_s=gpu_s)
            self._run_step(runs, rule_now, run)
        return max(start, horizon)

    def walk_hours(self, *, state: dict, start: int, horizon: int) -> int:
        """low_efficiency: at the end of every hour, the allocation's trailing window."""
        runs: dict = state.setdefault("runs", {})
        first = start
        last = horizon - horizon % HOUR_S
        if last <= first:
            return start
        policy = self.policy
        window = policy.low_efficiency_window_days * 86_400
        hourly: dict[int, list[AllocationGpuHourly]] = defaultdict(list)
        for row in AllocationGpuHourly.objects.filter(
            allocation=self.allocation, hour__gte=first - window, hour__lt=last
        ).only("gpu_id", "hour", "observed_s", "busy_s"):
            hourly[row.hour].append(row)
        hours_known = sorted(hourly)
        for hour in range(first, last, HOUR_S):
            if hour not in hourly:
                continue
            end = hour + HOUR_S
            in_window = [h for h in hours_known if end - window <= h < end]
            observed = sum(r.observed_s for h in in_window for r in hourly[h])
            busy = sum(r.busy_s for h in in_window for r in hourly[h])
            holds = (
                policy.low_efficiency_enabled
                and observed >= policy.low_efficiency_min_gpu_hours * HOUR_S
                and busy <= observed * policy.low_efficiency_pct / 100
            )
            rule = Rule.LOW_EFFICIENCY
            if not holds:
                self._run_break(runs, rule, at=end)
                continue
            run = runs.get(rule)
            if run is None:
                # It fires on the whole window's unused time: that is the waste that made it.
                run = self._run_new(end)
                waste: dict[int, float] = defaultdict(float)
                for h in in_window:
                    for r in hourly[h]:
                        waste[r.gpu_id] += max(0.0, r.observed_s - r.busy_s)
            else:
                waste = defaultdict(float)
                for r in hourly[hour]:
                    waste[r.gpu_id] += max(0.0, r.observed_s - r.busy_s)
            self._run_add(run, ts=end, span=0, waste=dict(waste), gpu_s=observed)
            run["efficiency"] = busy / observed if observed else None
            self._run_step(runs, rule, run)
        return last

    def finish(self, *, state: dict) -> None:
        """The allocation ended and every bucket of it was evaluated: close every run."""
        end = ts_of(self.allocation.end)
        for rule in list(state.get("runs", {})):
            self._run_break(state["runs"], rule, at=end)


@dataclass
class ProjectWalk:
    """``low_efficiency`` for a whole project: at the end of every hour, the project's jobs
    pooled over the trailing window (busy / observed GPU-seconds, as for one allocation).

    This closes the gap of the allocation rule: ten jobs of 10 GPU-hours at 5 % each never
    reach its 50 GPU-hour floor, the project they belong to does. The project is judged as a
    whole, independently of the findings its jobs may have: that keeps the verdict a function
    of the rollups alone (the same live or in bulk, untouched by someone resolving a job's
    finding by hand), and a big wasteful job can show up twice (its own finding and its
    project's). The noise stays bounded: one finding per project while the condition holds,
    announced once (notifications are keyed by finding), and an hour in which the project
    uses no GPU at all is a pause -- it neither extends nor ends the finding -- so a project
    with gaps between its jobs does not get a new alert after every gap. The finding ends at
    the first hour whose trailing window no longer qualifies (efficiency above the floor, or
    fewer GPU-hours than the minimum), the end of the last hour it held.
    """

    project: Project
    policy: ResolvedPolicy
    sink: FindingSink

    def window_s(self) -> int:
        return self.policy.low_efficiency_window_days * 86_400

    def walk_hours(self, *, state: dict, start: int, last: int, usage: dict[int, HourUsage]) -> int:
        """Evaluate the hours starting in ``[start, last)``; ``usage`` must hold every hour
        from ``start + 1 h - window``. Returns the next hour to evaluate."""
        runs: dict = state.setdefault("runs", {})
        rule = Rule.LOW_EFFICIENCY
        policy = self.policy
        window = self.window_s()
        known = sorted(usage)
        for hour in range(start, last, HOUR_S):
            end = hour + HOUR_S
            in_window = known[
                bisect.bisect_left(known, end - window) : bisect.bisect_left(known, end)
            ]
            # fsum: the same total whatever the order of the additions, so live detection and
            # one bulk pass agree exactly at the min-GPU-hours and pct boundaries.
            observed = math.fsum(usage[h].observed_s for h in in_window)
            busy = math.fsum(usage[h].busy_s for h in in_window)
            holds = (
                policy.low_efficiency_enabled
                and observed > 0
                and observed >= policy.low_efficiency_min_gpu_hours * HOUR_S
                and busy <= observed * policy.low_efficiency_pct / 100
            )
            run = runs.get(rule)
            if not holds:
                runs.pop(rule, None)
                if run and run["finding"] is not None:
                    self.sink.close(finding_id=run["finding"], run=run, ended=dt_of(run["end"]))
                continue
            now_hour = usage.get(hour)
            if now_hour is None or now_hour.observed_s <= 0:
                continue  # the project used no GPU this hour: a pause
            if run is None:
                # It fires on the whole window's unused time: that is the waste that made it.
                run = {
                    "start": end, "n": 0, "waste_s": 0.0, "cost": "0", "gpus": [],
                    "finding": None,
                }  # fmt: skip
                waste_s = math.fsum(usage[h].unused_s for h in in_window)
                cost = sum((usage[h].unused_cost for h in in_window), Decimal(0))
            else:
                waste_s, cost = now_hour.unused_s, now_hour.unused_cost
            run["last"] = hour
            run["end"] = end
            run["n"] += 1
            run["waste_s"] += waste_s
            run["cost"] = str(Decimal(run["cost"]) + cost)
            run["gpu_s"] = observed  # the window's GPU-seconds, not a running total
            run["efficiency"] = busy / observed
            run["detail"] = {
                "scope": "project",
                "window_days": policy.low_efficiency_window_days,
                "window_gpu_hours": observed / HOUR_S,
                "window_busy_gpu_hours": busy / HOUR_S,
                "threshold_pct": policy.low_efficiency_pct,
            }
            if run["finding"] is None:
                run["finding"] = self.sink.open_project(rule=rule, project=self.project, run=run)
            else:
                self.sink.extend(finding_id=run["finding"], run=run)
            runs[rule] = run
        return max(start, last)


def allocation_horizon(
    *,
    allocation: Allocation,
    gpus: list[Gpu],
    now: dt.datetime,
    pending: dict[int, int],
    data_end: dict[int, int],
) -> int:
    """The end (epoch seconds) of the buckets whose data is in for every GPU of the allocation.

    A bucket is complete once its GPU has sent data for a later bucket (agents and spools
    send in order), so ``data_end`` (the newest bucket with samples, per GPU) bounds it, not
    ``last_seen_at``, which is when a batch *arrived* and says nothing about which minutes it
    covered. GPUs quiet for longer than ``FLOPWATCH_WASTE_LATE_WAIT_S`` stop holding back the
    others; when all are quiet, everything that did arrive is evaluated.
    """
    now_ts = ts_of(now)
    late_wait = getattr(settings, "FLOPWATCH_WASTE_LATE_WAIT_S", 3600)
    fresh = [
        g for g in gpus if g.last_seen_at is not None and now_ts - ts_of(g.last_seen_at) < late_wait
    ]
    if fresh:
        horizon = min(data_end.get(g.id, 0) for g in fresh)
    else:
        ends = [data_end[g.id] + BUCKET_S for g in gpus if g.id in data_end]
        horizon = max(ends) if ends else 0
    horizon = min(horizon, now_ts)
    for gpu in gpus:
        if gpu.id in pending:
            horizon = min(horizon, pending[gpu.id])
    if allocation.end is not None:
        end_ts = ts_of(allocation.end)
        if now_ts - end_ts >= late_wait:
            # Long over: whatever has not arrived by now is missing data.
            horizon = max(horizon, min(end_ts + BUCKET_S, now_ts))
        horizon = min(horizon, end_ts + BUCKET_S)
    return horizon


def data_end_by_gpu(*, gpu_ids: list[int], since: int) -> dict[int, int]:
    """The newest bucket with samples per GPU, looking only from ``since`` (the oldest
    cursor) so the query reads recent rows, not months of them."""
    from django.db.models import Max

    return dict(
        GpuRollup5m.objects.filter(gpu_id__in=gpu_ids, bucket__gte=since, samples__gt=0)
        .values("gpu_id")
        .annotate(last=Max("bucket"))
        .values_list("gpu_id", "last")
    )


def pending_by_gpu(*, gpu_ids: list[int]) -> dict[int, int]:
    """The oldest bucket still waiting for the rollup, per GPU."""
    from django.db.models import Min

    return dict(
        RollupPending.objects.filter(gpu_id__in=gpu_ids)
        .values("gpu_id")
        .annotate(first=Min("bucket"))
        .values_list("gpu_id", "first")
    )
