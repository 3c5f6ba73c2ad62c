"""A labelled fleet for the waste tests: what every GPU did, minute by minute, and which
findings that must produce (and nothing else).

Rollup rows are built directly from the activity plan (``scenario_rollups_build``), or the
same plan is turned into raw samples for the end-to-end test through ingest and rollups.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

T0 = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)
END = T0 + dt.timedelta(hours=6)
# Data runs one bucket past END: a bucket counts once a later one has data.
DATA_END_H = 6 + 5 / 60
H100 = "NVIDIA H100 80GB HBM3"
H100_MIB = 81559
RATE = Decimal("2.00")


def h(hours: float) -> dt.datetime:
    return T0 + dt.timedelta(hours=hours)


# A plan: seconds since T0 -> (activity 0..1, memory used MiB)
Plan = Callable[[int], tuple[float, float]]


def busy(t: int) -> tuple[float, float]:
    return 0.8, 40_000


def between(start_h: float, end_h: float, inside: tuple, outside: tuple) -> Plan:
    return lambda t: inside if start_h * 3600 <= t < end_h * 3600 else outside


@dataclass
class GpuSpec:
    node: str
    index: int
    plan: Plan
    data_until_h: float = DATA_END_H  # the agent stops reporting here (silent node)


@dataclass
class JobSpec:
    external_id: str
    project: str
    gpus: list[tuple[str, int]]
    start_h: float = 0.0
    end_h: float | None = None


@dataclass
class Scenario:
    gpus: list[GpuSpec]
    jobs: list[JobSpec]
    expected: list[dict] = field(default_factory=list)


IDLE = (0.0, 0.0)
MEM_IDLE = (0.0, 20_480.0)
LIGHT = (0.10, 5_000.0)
LOW_EFF = (0.20, 30_000.0)
BUSY = (0.8, 40_000.0)


def labelled_scenario() -> Scenario:
    gpus = [
        # idle-job: busy, idle 1h..3h, busy again
        GpuSpec("n1", 0, between(1, 3, IDLE, BUSY)),
        # memidle-job: holds 20 GiB doing nothing 2h..2h45
        GpuSpec("n1", 1, between(2, 2.75, MEM_IDLE, BUSY)),
        # partial-job: GPU 2 works throughout, GPU 3 idles 1h..3h
        GpuSpec("n1", 2, busy),
        GpuSpec("n1", 3, between(1, 3, IDLE, BUSY)),
        # healthy jobs and an unallocated idle GPU (nobody holds it: no finding)
        GpuSpec("n4", 0, busy),
        GpuSpec("n4", 1, busy),
        GpuSpec("n4", 2, lambda t: IDLE),
        # silent node: reports until 2h, then nothing
        GpuSpec("n3", 0, busy, data_until_h=2.0),
    ]
    # oversized-job: 8 large GPUs at 10 % with 5 GB each: 24 GPU-h after 3 h
    gpus += [GpuSpec("n2", i, lambda t: LIGHT) for i in range(8)]
    # low-eff-job: 4 GPUs at 20 % holding 30 GB (neither idle nor oversized)
    gpus += [GpuSpec("n5", i, lambda t: LOW_EFF) for i in range(4)]
    jobs = [
        JobSpec("slurm:1001", "a1", [("n1", 0)]),
        JobSpec("slurm:1002", "a1", [("n1", 1)]),
        JobSpec("slurm:1003", "a2", [("n1", 2), ("n1", 3)]),
        JobSpec("slurm:1004", "a1", [("n4", 0), ("n4", 1)]),
        # The silent node's job runs in a1, so b1 is the oversized job alone: 48 GPU-h at 10 %,
        # under the 50 GPU-h floor of the project-level low_efficiency (a labelled negative;
        # with this job too b1 would sit exactly on the floor).
        JobSpec("slurm:1005", "a1", [("n3", 0)]),
        JobSpec("slurm:1006", "b1", [("n2", i) for i in range(8)]),
        JobSpec("slurm:1007", "a2", [("n5", i) for i in range(4)]),
    ]
    cost = lambda gpu_hours: (RATE * Decimal(str(gpu_hours))).quantize(Decimal("0.01"))  # noqa: E731
    expected = [
        {"rule": "idle_allocation", "job": "slurm:1001", "gpus": {"n1/0"}, "started": h(1),
         "ended": h(3), "hours": 2.0, "cost": cost(2.0), "opens_at": h(2)},
        {"rule": "memory_held_idle", "job": "slurm:1002", "gpus": {"n1/1"}, "started": h(2),
         "ended": h(2.75), "hours": 0.75, "cost": cost(0.75), "opens_at": h(2.5)},
        {"rule": "partial_use", "job": "slurm:1003", "gpus": {"n1/3"}, "started": h(1),
         "ended": h(3), "hours": 2.0, "cost": cost(2.0), "opens_at": h(2)},
        {"rule": "oversized_gpu", "job": "slurm:1006", "gpus": {f"n2/{i}" for i in range(8)},
         "started": h(0), "ended": None, "hours": 0.9 * 48, "cost": cost(0.9 * 48),
         "opens_at": h(3)},
        # 4 GPUs x 3 h = 12 GPU-h >= the project's 10 GPU-h floor at the end of hour 3;
        # the window's unused time (80 % of 12 GPU-h), then 80 % of 4 GPU-h per hour more.
        {"rule": "low_efficiency", "job": "slurm:1007", "gpus": {f"n5/{i}" for i in range(4)},
         "started": h(3), "ended": None, "hours": 0.8 * 24, "cost": cost(0.8 * 24),
         "opens_at": h(3)},
        {"rule": "silent_gpu", "job": "slurm:1005", "gpus": {"n3/0"}, "started": h(2),
         "ended": None, "hours": 0.0, "cost": Decimal("0.00"), "opens_at": h(2)},
    ]  # fmt: skip
    return Scenario(gpus, jobs, expected)


@dataclass
class Built:
    gpus: dict[str, object]  # "n1/0" -> Gpu
    jobs: dict[str, object]  # external id -> Allocation
    specs: dict[str, GpuSpec]
    holder: dict[int, object] = field(default_factory=dict)  # gpu id -> Allocation


def rate_card_ensure(*, cluster) -> None:
    """H100 at RATE per GPU-hour in the cluster (reusing the model the migrations seed)."""
    from apps.chargeback.models import GpuModel, GpuModelAlias, Rate
    from apps.chargeback.selectors import gpu_model_name_normalise

    alias = GpuModelAlias.objects.filter(name=gpu_model_name_normalise(H100)).first()
    if alias is None:
        model = GpuModel.objects.create(slug="h100-test", name="H100 test")
        GpuModelAlias.objects.create(gpu_model=model, name=gpu_model_name_normalise(H100))
    else:
        model = alias.gpu_model
    Rate.objects.create(
        gpu_model=model, cluster=cluster, effective_from=dt.date(2026, 1, 1),
        price_per_gpu_hour=RATE,
    )  # fmt: skip


def fleet_build(scenario: Scenario, personas) -> Built:
    """Cluster, nodes, GPUs, allocations and a rate card for the scenario (no telemetry)."""
    from apps.fleet.models import Cluster, Gpu, Node
    from apps.tenancy.models import Allocation, AllocationGpu, Project

    cluster = Cluster.objects.create(slug="c1", name="Cluster 1")
    rate_card_ensure(cluster=cluster)
    nodes: dict[str, Node] = {}
    gpus: dict[str, Gpu] = {}
    specs: dict[str, GpuSpec] = {}
    holder: dict[int, object] = {}
    for spec in scenario.gpus:
        node = nodes.get(spec.node) or Node.objects.create(cluster=cluster, hostname=spec.node)
        nodes[spec.node] = node
        key = f"{spec.node}/{spec.index}"
        gpus[key] = Gpu.objects.create(
            uuid=f"GPU-{spec.node}-{spec.index}-0000", node=node, index=spec.index,
            model_name=H100, mem_total_mib=H100_MIB,
        )  # fmt: skip
        specs[key] = spec
    jobs = {}
    for job in scenario.jobs:
        allocation = Allocation.objects.create(
            source="slurm", external_id=job.external_id,
            project=Project.objects.get(slug=job.project), user_name="alice",
            start=h(job.start_h), end=h(job.end_h) if job.end_h is not None else None,
        )  # fmt: skip
        for node, index in job.gpus:
            gpu = gpus[f"{node}/{index}"]
            AllocationGpu.objects.create(allocation=allocation, gpu=gpu)
            holder[gpu.id] = allocation
        jobs[job.external_id] = allocation
    return Built(gpus, jobs, specs, holder)


def rollups_build(
    built: Built, *, start_h: float = 0.0, end_h: float = DATA_END_H, only: set | None = None
) -> None:
    """5-minute rollup rows for buckets in [start_h, end_h) as the rollup would compute them
    from the plan, and the hourly rows of the hours that end inside that range."""
    from apps.telemetry.models import AllocationGpuHourly, GpuRollup5m

    t0 = int(T0.timestamp())
    holder = built.holder
    lo, hi = round(start_h * 3600), round(end_h * 3600)
    rows, hourly = [], []
    for key, gpu in built.gpus.items():
        if only is not None and key not in only:
            continue
        spec = built.specs[key]
        data_end = round(spec.data_until_h * 3600)
        for offset in range(lo - lo % 300, min(hi, data_end), 300):
            rows.append(_rollup_row(gpu, t0, offset, spec.plan(offset), gpu.id in holder))
        if gpu.id not in holder:
            continue
        for hour in range(0, min(hi, data_end) - 3599, 3600):
            if not lo < hour + 3600 <= hi:
                continue
            cells = [spec.plan(o) for o in range(hour, hour + 3600, 300)]
            hourly.append(
                AllocationGpuHourly(
                    allocation=holder[gpu.id],
                    gpu=gpu,
                    hour=t0 + hour,
                    allocated_s=3600,
                    observed_s=3600,
                    busy_s=sum(a * 300 for a, _ in cells),
                    idle_s=sum(300 for a, _ in cells if a < 0.01),
                    mem_held_idle_s=sum(300 for a, m in cells if a < 0.01 and m > 1024),
                )
            )
    GpuRollup5m.objects.bulk_create(rows, batch_size=2000)
    AllocationGpuHourly.objects.bulk_create(hourly, batch_size=2000)


def _rollup_row(gpu, t0: int, offset: int, cell: tuple[float, float], allocated: bool):
    from apps.telemetry.models import GpuRollup5m

    activity, mem = cell
    idle = activity < 0.01
    return GpuRollup5m(
        gpu=gpu, bucket=t0 + offset, samples=30, covered_s=300, missing_s=0,
        allocated_s=300 if allocated else 0, busy_s=activity * 300,
        idle_s=300 if idle else 0, mem_held_idle_s=300 if idle and mem > 1024 else 0,
        util_mean=activity * 100, util_max=activity * 100,
        mem_used_mean_mib=mem, mem_used_max_mib=mem, activity_source="util",
    )  # fmt: skip


def last_seen_set(built: Built, *, now: dt.datetime) -> None:
    """Each GPU (and node) last reported at ``now`` or when its agent went quiet."""
    from apps.fleet.models import Gpu, Node

    by_seen: dict[dt.datetime, list] = {}
    for key, gpu in built.gpus.items():
        by_seen.setdefault(min(now, h(built.specs[key].data_until_h)), []).append(gpu)
    for seen, gpus in by_seen.items():
        Gpu.objects.filter(pk__in=[g.pk for g in gpus]).update(last_seen_at=seen)
        Node.objects.filter(pk__in={g.node_id for g in gpus}).update(last_seen_at=seen)


def gpu_uuid(key: str) -> str:
    node, index = key.split("/")
    return f"GPU-{node}-{index}-0000"


def sample_batches(scenario: Scenario, *, start_s: int, end_s: int, interval: int = 30):
    """Contract batches (one per node) with the plan's samples in [start_s, end_s)."""
    jobs = {f"{n}/{i}": job for job in scenario.jobs for n, i in job.gpus}
    t0 = int(T0.timestamp())
    by_node: dict[str, list[GpuSpec]] = {}
    for spec in scenario.gpus:
        by_node.setdefault(spec.node, []).append(spec)
    for node, specs in by_node.items():
        series = []
        for spec in specs:
            key = f"{spec.node}/{spec.index}"
            last = min(end_s, round(spec.data_until_h * 3600))
            offsets = list(range(start_s - start_s % interval, last, interval))
            offsets = [o for o in offsets if o >= start_s]
            if not offsets:
                continue
            cells = [spec.plan(o) for o in offsets]
            job = jobs.get(key)
            series.append(
                {
                    "gpu": gpu_uuid(key),
                    "alloc": {"job": job.external_id, "project": job.project, "user": "alice"}
                    if job
                    else None,
                    "ts": [t0 + o for o in offsets],
                    "util_pct": [a * 100 for a, _ in cells],
                    "mem_used_mib": [m for _, m in cells],
                    "power_w": [300.0] * len(offsets),
                }
            )
        if not series:
            continue
        yield (
            node,
            {
                "node": node,
                "batch_id": f"{node}-{start_s}",
                "agent": {"version": "0.1.0", "source": "sim", "interval_s": interval},
                "gpus": [
                    {
                        "uuid": gpu_uuid(f"{s.node}/{s.index}"),
                        "index": s.index,
                        "model": H100,
                        "mem_total_mib": H100_MIB,
                    }
                    for s in specs
                ],
                "series": series,
            },
        )


def findings_observed(built: Built) -> list[dict]:
    """The findings in the database, in the shape of ``Scenario.expected``."""
    from apps.waste.models import Finding

    names = {gpu.id: key for key, gpu in built.gpus.items()}
    out = []
    for f in Finding.objects.order_by("rule", "id").select_related("allocation"):
        out.append(
            {
                "rule": f.rule,
                "job": f.allocation.external_id if f.allocation else None,
                "gpus": {names[g.id] for g in f.gpus.all()},
                "started": f.started,
                "ended": f.ended,
                "hours": round(f.wasted_gpu_hours, 6),
                "cost": f.wasted_cost,
                "detected_at": f.detected_at,
                "late": f.detected_late,
                "status": f.status,
            }
        )
    return out
