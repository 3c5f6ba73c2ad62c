"""Deterministic simulated GPU fleet, for the agent (``--source sim``), demos and server tests.

Everything is a pure function of ``(seed, time)``: the job schedule of any time window is
generated without simulating from the beginning of time, and per-sample noise is a hash of
``(seed, GPU, timestamp)``. So ``fleet.jobs(a, c) == fleet.jobs(a, b) + fleet.jobs(b, c)``
(modulo jobs spanning ``b``) and ``batches``/``write_csv`` give the same samples however a
range is split.

How the schedule is drawn: each node's time axis is cut into windows of
:data:`WINDOW_S` (3 days, phase-shifted per node so windows do not end fleet-wide at once).
In each window a seeded RNG (keyed by seed, hostname, window index) splits the node's GPUs
into lanes of 1/2/4/8 GPUs, and per lane draws a sequence of jobs separated by idle gaps;
jobs never cross their window's end. Kinds: see :data:`KINDS`.

Public API (keyword-only where it matters)::

    fleet = demo_fleet(seed=42)                       # 2 clusters, 16 nodes x 8 GPUs
    fleet = Fleet(seed=1, nodes=[NodeSpec(...)], projects=[ProjectSpec(...)])
    fleet = Fleet(seed=1, nodes=..., projects=..., jobs=[Job(...)], silences=[Silence(...)],
                  random_jobs=False)                  # explicit labelled scenario
    fleet.jobs(start, end) -> list[Job]               # ground truth
    fleet.batches(start, end, interval=60, batch_seconds=3600) -> Iterator[(hostname, payload)]
    fleet.write_csv(path_or_file, start, end, interval=60)   # import_samples wide CSV
    fleet.readings(hostname=..., ts=...) -> (gpus, readings)  # one tick (the agent's path)
    gpu_uuid(hostname, index) -> "GPU-<uuid5>"

numpy is imported here only; the agent's nvml/dcgm paths never import this module.
"""

from __future__ import annotations

import csv
import itertools
import math
import os
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

# The simulator uses no BLAS; without this OpenBLAS starts one thread (and buffer) per core
# at import, which on a 128-core GPU node costs far more memory than the agent itself.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

from agents import __version__
from agents.sources import GpuInfo, Reading

WINDOW_S = 3 * 86400
_UUID_NS = uuid.UUID("6b1f3c1e-8c55-4c0a-9a3e-2f6f0c0f1a57")

KINDS = (
    "steady",  # training at a steady level: util ~97-100 %, sm_active = job level
    "sawtooth",  # data-loader bound: busy/idle cycles of tens of seconds to minutes
    "diurnal_inference",  # serving with a daily traffic curve
    "idle_allocated",  # allocated, nothing running (only a CUDA context at most)
    "memory_held_idle",  # model loaded (tens of GiB) but no traffic: zero activity
    "partial_multi_gpu",  # multi-GPU job where ``idle_gpus`` do nothing
    "crashed",  # ran, crashed at ``crash_at``; the allocation stays, GPUs empty
    "oversized",  # low activity, < 10 GB memory on a big GPU, for a long time
)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Physical constants of a GPU model used to make power/temperature/clock plausible."""

    mem_total_mib: int
    idle_w: float
    max_w: float
    max_clock_mhz: int
    idle_clock_mhz: int


MODELS: dict[str, ModelSpec] = {
    "NVIDIA H100 80GB HBM3": ModelSpec(81559, 70.0, 700.0, 1980, 345),
    "NVIDIA A100-SXM4-80GB": ModelSpec(81920, 60.0, 400.0, 1410, 210),
    "NVIDIA L40S": ModelSpec(46068, 35.0, 350.0, 2520, 210),
}
_DEFAULT_MODEL = ModelSpec(81559, 60.0, 500.0, 1800, 300)


def gpu_uuid(hostname: str, index: int) -> str:
    """Deterministic GPU UUID: ``"GPU-" + uuid5(NS, f"{hostname}/{index}")``."""
    return "GPU-" + str(uuid.uuid5(_UUID_NS, f"{hostname}/{index}"))


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """A simulated node: ``gpu_count`` GPUs of one model."""

    hostname: str
    cluster: str = "sim"
    gpu_model: str = "NVIDIA H100 80GB HBM3"
    gpu_count: int = 8
    mem_total_mib: int | None = None  # default: from MODELS

    @property
    def model(self) -> ModelSpec:
        return MODELS.get(self.gpu_model, _DEFAULT_MODEL)

    @property
    def mem_total(self) -> int:
        return self.mem_total_mib or self.model.mem_total_mib

    def gpu_uuids(self) -> list[str]:
        return [gpu_uuid(self.hostname, i) for i in range(self.gpu_count)]


@dataclass(frozen=True, slots=True)
class ProjectSpec:
    """A project (slug), its team and users; ``kinds`` weights the behaviours it runs."""

    slug: str
    team: str
    users: tuple[str, ...] = ("user",)
    kinds: tuple[tuple[str, float], ...] | None = None
    weight: float = 1.0


TRAINING_KINDS = (
    ("steady", 0.56),
    ("sawtooth", 0.10),
    ("partial_multi_gpu", 0.08),
    ("idle_allocated", 0.08),
    ("memory_held_idle", 0.05),
    ("crashed", 0.06),
    ("oversized", 0.03),
    ("diurnal_inference", 0.02),
)
SERVING_KINDS = (
    ("diurnal_inference", 0.45),
    ("steady", 0.22),
    ("memory_held_idle", 0.16),
    ("idle_allocated", 0.08),
    ("oversized", 0.04),
)


@dataclass(frozen=True, slots=True)
class Job:
    """Ground truth for one job. ``start``/``end`` epoch seconds, ``end`` exclusive.

    ``level``: sm_active while busy (0..1); ``mem_mib``: memory held per GPU; ``idle_gpus``:
    GPUs of a ``partial_multi_gpu`` job that stay idle; ``crash_at``: when a ``crashed`` job
    died. Unset values get kind-specific defaults (deterministic from the job id).
    """

    job_id: str
    project: str
    team: str
    user: str
    node: str
    gpus: tuple[str, ...]
    kind: str
    start: float
    end: float
    level: float | None = None
    mem_mib: int | None = None
    idle_gpus: tuple[str, ...] = ()
    crash_at: float | None = None
    period_s: float | None = None
    duty: float | None = None

    @property
    def alloc(self) -> dict[str, Any]:
        return {"job": self.job_id, "project": self.project, "user": self.user}


@dataclass(frozen=True, slots=True)
class Silence:
    """A window in which ``node`` sends nothing (agent down, network cut)."""

    node: str
    start: float
    end: float


@dataclass(slots=True)
class _Resolved:
    job: Job
    level: float
    mem_mib: int
    crash_at: float
    period_s: float
    duty: float
    peak: float
    idle: frozenset[str] = field(default_factory=frozenset)


def _rng(*parts: Any) -> random.Random:
    # str seeds are hashed with SHA-512 by random.Random: stable across runs and machines.
    return random.Random(":".join(str(p) for p in parts))


def _splitmix(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _noise(key: int, ts: np.ndarray, k: int) -> np.ndarray:
    """Uniform [0, 1) noise, a pure function of (key, ts, k)."""
    t = np.round(ts * 1000).astype(np.int64).astype(np.uint64)
    h = _splitmix(t ^ np.uint64((key + k * 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _key(*parts: Any) -> int:
    return uuid.uuid5(_UUID_NS, ":".join(str(p) for p in parts)).int & 0xFFFFFFFFFFFFFFFF


class Fleet:
    """A deterministic simulated fleet. See the module docstring for the API."""

    def __init__(
        self,
        *,
        seed: int | str,
        nodes: list[NodeSpec] | None = None,
        projects: list[ProjectSpec] | None = None,
        jobs: list[Job] | None = None,
        silences: list[Silence] | None = None,
        random_jobs: bool | None = None,
        mean_gap_s: float = 2.5 * 3600,
    ) -> None:
        self.seed = seed
        self.nodes = list(nodes) if nodes is not None else demo_fleet(seed=0).nodes
        self.projects = list(projects) if projects is not None else list(DEMO_PROJECTS)
        self.explicit_jobs = list(jobs or [])
        self.silences = list(silences or [])
        self.random_jobs = (not self.explicit_jobs) if random_jobs is None else random_jobs
        self.mean_gap_s = mean_gap_s
        self._by_host = {n.hostname: n for n in self.nodes}
        self._teams = {p.slug: p.team for p in self.projects}
        self._window_cache: dict[tuple[str, int], list[Job]] = {}
        self._node_phase = {
            n.hostname: _rng(seed, n.hostname, "phase").uniform(0, WINDOW_S) for n in self.nodes
        }

    # -- schedule ------------------------------------------------------------------------
    def node(self, hostname: str) -> NodeSpec:
        return self._by_host[hostname]

    def team_of(self, project: str) -> str | None:
        return self._teams.get(project)

    def _window_jobs(self, node: NodeSpec, wi: int) -> list[Job]:
        key = (node.hostname, wi)
        if key in self._window_cache:
            return self._window_cache[key]
        w0 = wi * WINDOW_S + self._node_phase[node.hostname]
        w1 = w0 + WINDOW_S
        rng = _rng(self.seed, node.hostname, wi)
        lanes: list[list[int]] = []
        free = list(range(node.gpu_count))
        while free:
            size = rng.choice([s for s in (1, 2, 4, 8) if s <= len(free)])
            lanes.append(free[:size])
            free = free[size:]
        uuids = node.gpu_uuids()
        weights = [p.weight for p in self.projects]
        out: list[Job] = []
        for li, lane in enumerate(lanes):
            t = w0 + rng.expovariate(1 / self.mean_gap_s) * 0.5
            k = 0
            while t < w1 - 600:
                proj = rng.choices(self.projects, weights=weights)[0]
                kinds = proj.kinds or TRAINING_KINDS
                kind = rng.choices([k_ for k_, _ in kinds], weights=[w for _, w in kinds])[0]
                if kind == "partial_multi_gpu" and len(lane) < 2:
                    kind = "steady"
                dur = {
                    "steady": rng.lognormvariate(math.log(10 * 3600), 0.8),
                    "sawtooth": rng.uniform(2, 12) * 3600,
                    "diurnal_inference": rng.uniform(24, 60) * 3600,
                    "idle_allocated": rng.uniform(1, 8) * 3600,
                    "memory_held_idle": rng.uniform(2, 20) * 3600,
                    "partial_multi_gpu": rng.uniform(4, 24) * 3600,
                    "crashed": rng.uniform(3, 20) * 3600,
                    "oversized": rng.uniform(26, 60) * 3600,
                }[kind]
                start = float(int(t))
                end = float(int(min(w1, t + max(dur, 900))))
                gpus = tuple(uuids[i] for i in lane)
                idle: tuple[str, ...] = ()
                if kind == "partial_multi_gpu":
                    n_idle = rng.randint(1, len(gpus) - 1)
                    idle = tuple(gpus[-n_idle:])
                out.append(
                    Job(
                        job_id=f"sim:{node.hostname}-{wi}-{li}-{k}",
                        project=proj.slug,
                        team=proj.team,
                        user=rng.choice(proj.users),
                        node=node.hostname,
                        gpus=gpus,
                        kind=kind,
                        start=start,
                        end=end,
                        idle_gpus=idle,
                    )
                )
                k += 1
                t = end + rng.expovariate(1 / self.mean_gap_s)
        if len(self._window_cache) > 4096:
            self._window_cache.clear()
        self._window_cache[key] = out
        return out

    def jobs(self, start: float, end: float, *, node: str | None = None) -> list[Job]:
        """Ground truth: every job overlapping ``[start, end)``, sorted by (start, id)."""
        out: list[Job] = []
        nodes = [self._by_host[node]] if node else self.nodes
        if self.random_jobs:
            for n in nodes:
                ph = self._node_phase[n.hostname]
                for wi in range(
                    math.floor((start - ph) / WINDOW_S), math.floor((end - ph) / WINDOW_S) + 1
                ):
                    out.extend(
                        j for j in self._window_jobs(n, wi) if j.start < end and j.end > start
                    )
        hosts = {n.hostname for n in nodes}
        out.extend(
            j for j in self.explicit_jobs if j.node in hosts and j.start < end and j.end > start
        )
        out.sort(key=lambda j: (j.start, j.job_id))
        return out

    def _resolve(self, job: Job) -> _Resolved:
        rng = _rng(self.seed, job.job_id, "params")
        node = self._by_host[job.node]
        total = node.mem_total
        level = job.level
        mem = job.mem_mib
        if level is None:
            level = {
                "steady": rng.betavariate(3.0, 1.6) * 0.8 + 0.15,
                "sawtooth": rng.uniform(0.4, 0.8),
                "diurnal_inference": rng.uniform(0.45, 0.8),
                "partial_multi_gpu": rng.uniform(0.5, 0.85),
                "crashed": rng.uniform(0.4, 0.85),
                "oversized": rng.uniform(0.04, 0.12),
            }.get(job.kind, 0.0)
        if mem is None:
            mem = {
                "memory_held_idle": int(total * rng.uniform(0.3, 0.85)),
                "oversized": int(rng.uniform(3000, 9000)),
                "idle_allocated": int(rng.choice([0, 0, 450, 600])),
            }.get(job.kind, int(total * rng.uniform(0.35, 0.95)))
        return _Resolved(
            job=job,
            level=float(level),
            mem_mib=int(mem),
            crash_at=job.crash_at or job.start + (job.end - job.start) * rng.uniform(0.15, 0.6),
            period_s=job.period_s or rng.uniform(40, 300),
            duty=job.duty or rng.uniform(0.35, 0.75),
            peak=rng.uniform(0, 1),
            idle=frozenset(job.idle_gpus),
        )

    # -- values --------------------------------------------------------------------------
    def _gpu_arrays(
        self, node: NodeSpec, index: int, ts: np.ndarray, segs: list[_Resolved]
    ) -> dict[str, np.ndarray]:
        """Field arrays of one GPU over ``ts`` (float seconds) given its job segments."""
        g = node.gpu_uuids()[index]
        key = _key(self.seed, g)
        m = node.model
        n = len(ts)
        util = np.zeros(n)
        sm = np.zeros(n)
        mem = np.zeros(n)
        tensor_share = np.zeros(n)
        n1, n2, n3 = _noise(key, ts, 1), _noise(key, ts, 2), _noise(key, ts, 3)
        for r in segs:
            j = r.job
            sel = (ts >= j.start) & (ts < j.end)
            if not sel.any():
                continue
            t = ts[sel]
            a, b, c = n1[sel], n2[sel], n3[sel]
            kind = j.kind
            if kind == "partial_multi_gpu" and g in r.idle:
                kind = "idle_allocated_ctx"
            busy_mem = r.mem_mib * (1 + 0.01 * (b - 0.5))
            if kind in ("steady", "partial_multi_gpu", "crashed"):
                u = np.clip(96 + 6 * a, 0, 100)
                s = np.clip(r.level + 0.08 * (b - 0.5), 0.0, 1.0)
                dip = c < 0.03  # checkpoints / evaluation pauses
                u = np.where(dip, 0.0, u)
                s = np.where(dip, 0.02 * b, s)
                mm = busy_mem
                if kind == "crashed":
                    dead = t >= r.crash_at
                    u, s, mm = np.where(dead, 0, u), np.where(dead, 0, s), np.where(dead, 0, mm)
                ten = 0.55
            elif kind == "sawtooth":
                phase = np.mod(t - j.start, r.period_s) / r.period_s
                on = phase < r.duty
                u = np.where(on, 93 + 7 * a, 0.0)
                s = np.where(on, np.clip(r.level + 0.1 * (b - 0.5), 0, 1), 0.01 * b)
                mm = busy_mem
                ten = 0.45
            elif kind == "diurnal_inference":
                load = 0.55 + 0.38 * np.sin(2 * np.pi * (t / 86400.0 - r.peak)) + 0.14 * (a - 0.5)
                load = np.clip(load, 0.0, 1.0)
                u = np.clip(load * 400, 0, 100)
                s = np.clip(load * r.level * 1.4, 0, 1)
                mm = busy_mem
                ten = 0.35
            elif kind == "oversized":
                u = 20 + 25 * a
                s = np.clip(r.level + 0.04 * (b - 0.5), 0, 1)
                mm = busy_mem
                ten = 0.2
            elif kind == "idle_allocated_ctx":
                u = np.zeros(len(t))
                s = np.zeros(len(t))
                mm = np.full(len(t), 520.0)
                ten = 0.0
            else:  # idle_allocated, memory_held_idle
                u = np.zeros(len(t))
                s = np.zeros(len(t))
                mm = np.full(len(t), float(r.mem_mib))
                ten = 0.0
            util[sel], sm[sel], mem[sel], tensor_share[sel] = u, s, mm, ten
        power = m.idle_w * (0.95 + 0.1 * n2) + (m.max_w - m.idle_w) * np.clip(
            0.12 * util / 100 + 0.8 * sm + 0.02 * (mem > 0), 0, 1
        )
        temp = 29 + 45 * (power - m.idle_w) / (m.max_w - m.idle_w) + 2 * n3
        clock = np.where(util > 0, m.max_clock_mhz, m.idle_clock_mhz)
        return {
            "util_pct": np.round(util),  # NVML reports whole percent
            "sm_active": np.round(sm, 3),
            "sm_occupancy": np.round(sm * (0.25 + 0.1 * n3), 3),
            "tensor_active": np.round(sm * tensor_share, 3),
            "dram_active": np.round(sm * 0.45, 3),
            "mem_used_mib": np.round(mem),
            "power_w": np.round(power, 1),
            "temp_c": np.round(temp),
            "sm_clock_mhz": clock,
        }

    def _silent_mask(self, hostname: str, ts: np.ndarray) -> np.ndarray:
        keep = np.ones(len(ts), dtype=bool)
        for s in self.silences:
            if s.node == hostname:
                keep &= ~((ts >= s.start) & (ts < s.end))
        return keep

    def _node_block(
        self, node: NodeSpec, ts: np.ndarray
    ) -> tuple[np.ndarray, list[dict[str, np.ndarray]], list[list[_Resolved]]]:
        """(kept ts, per-GPU field arrays, per-GPU segments) for one node over ``ts``."""
        ts = ts[self._silent_mask(node.hostname, ts)]
        if len(ts) == 0:
            return ts, [], []
        jobs = self.jobs(float(ts[0]), float(ts[-1]) + 1e-6, node=node.hostname)
        resolved = [self._resolve(j) for j in jobs]
        uuids = node.gpu_uuids()
        arrays, segs = [], []
        for i, g in enumerate(uuids):
            mine = [r for r in resolved if g in r.job.gpus]
            segs.append(mine)
            arrays.append(self._gpu_arrays(node, i, ts, mine))
        return ts, arrays, segs

    def gpu_infos(self, hostname: str) -> list[GpuInfo]:
        n = self._by_host[hostname]
        return [
            GpuInfo(uuid=g, index=i, model=n.gpu_model, mem_total_mib=n.mem_total)
            for i, g in enumerate(n.gpu_uuids())
        ]

    def readings(self, *, hostname: str, ts: float) -> tuple[list[GpuInfo], list[Reading]]:
        """One tick of one node (what ``--source sim`` sends); empty while silenced."""
        node = self._by_host[hostname]
        _kept, arrays, segs = self._node_block(node, np.array([float(ts)]))
        gpus = self.gpu_infos(hostname)
        out: list[Reading] = []
        for g, arr, seg in zip(gpus, arrays, segs, strict=False):
            job = next((r.job for r in seg if r.job.start <= ts < r.job.end), None)
            vals = {k: v.tolist()[0] for k, v in arr.items()}
            out.append(
                Reading(
                    gpu=g.uuid,
                    ts=float(ts),
                    values=vals,
                    alloc=job.alloc if job else None,
                    attributed=True,
                )
            )
        return gpus, out

    def _ts_grid(self, start: float, end: float, interval: float) -> np.ndarray:
        k0 = math.ceil(start / interval)
        k1 = math.ceil(end / interval)
        return np.arange(k0, k1, dtype=np.float64) * interval

    def _chunks(self, start: float, end: float, align: float) -> Iterator[tuple[float, float]]:
        step = align * max(1, int(86400 // align))
        c0 = math.floor(start / step) * step
        while c0 < end:
            yield max(start, c0), min(end, c0 + step)
            c0 += step

    def batches(
        self, start: float, end: float, interval: float = 60, batch_seconds: float | None = 3600
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield ``(hostname, payload)`` in the ``/api/v1/samples`` format for ``[start, end)``.

        Samples lie on multiples of ``interval``; batches cover aligned multiples of
        ``batch_seconds`` (default 1 h; ``None`` = one sample per batch), clipped to the
        range. ``batch_id`` is a uuid5 of (seed, node, batch bounds), so re-generating a range
        yields the same ids. ``agent.stats`` is included with zeros.
        """
        bs = float(batch_seconds or interval)
        for c0, c1 in self._chunks(start, end, bs):
            ts_all = self._ts_grid(c0, c1, interval)
            if len(ts_all) == 0:
                continue
            for node in self.nodes:
                ts, arrays, segs = self._node_block(node, ts_all)
                if len(ts) == 0:
                    continue
                gpus = [g.to_payload() for g in self.gpu_infos(node.hostname)]
                lists = [{k: v.tolist() for k, v in arr.items()} for arr in arrays]
                ts_list = [int(t) if t == int(t) else float(t) for t in ts.tolist()]
                bidx = np.floor(ts / bs)
                cuts = np.flatnonzero(np.diff(bidx)) + 1
                bounds = [0, *cuts.tolist(), len(ts)]
                for i0, i1 in itertools.pairwise(bounds):
                    b0 = max(c0, float(bidx[i0]) * bs)
                    b1 = min(c1, b0 - b0 % bs + bs if b0 % bs else b0 + bs)
                    series = []
                    for gi, g in enumerate(gpus):
                        self._append_series(
                            series, g["uuid"], ts[i0:i1], ts_list, lists[gi], segs[gi], i0, i1
                        )
                    payload = {
                        "node": node.hostname,
                        "batch_id": str(
                            uuid.uuid5(
                                _UUID_NS, f"{self.seed}/{node.hostname}/{b0}/{b1}/{interval}"
                            )
                        ),
                        "agent": {
                            "version": __version__,
                            "source": "sim",
                            "interval_s": interval,
                            "stats": {
                                "collected": 0,
                                "sent": 0,
                                "spooled": 0,
                                "dropped": 0,
                                "last_error": None,
                            },
                        },
                        "gpus": gpus,
                        "series": series,
                    }
                    yield node.hostname, payload

    @staticmethod
    def _append_series(
        series: list[dict[str, Any]],
        gpu: str,
        ts: np.ndarray,
        ts_list: list[Any],
        cols: dict[str, list[Any]],
        segs: list[_Resolved],
        i0: int,
        i1: int,
    ) -> None:
        # Split [i0, i1) at job boundaries: one entry per (GPU, job or no job).
        edges = {i0, i1}
        for r in segs:
            for t in (r.job.start, r.job.end):
                k = i0 + int(np.searchsorted(ts, t, side="left"))
                if i0 < k < i1:
                    edges.add(k)
        cut = sorted(edges)
        for a, b in itertools.pairwise(cut):
            t0 = ts_list[a]
            job = next((r.job for r in segs if r.job.start <= t0 < r.job.end), None)
            entry: dict[str, Any] = {
                "gpu": gpu,
                "alloc": job.alloc if job else None,
                "ts": ts_list[a:b],
            }
            for k, v in cols.items():
                entry[k] = v[a:b]
            series.append(entry)

    def write_csv(
        self, path_or_file: str | Path | IO[str], start: float, end: float, interval: float = 60
    ) -> int:
        """Write the ``import_samples`` wide CSV for ``[start, end)``; returns rows written.

        Rows are ordered by timestamp (then node, GPU index) so ``--source replay`` can
        stream them.
        """
        own = isinstance(path_or_file, str | Path)
        fh: IO[str] = open(path_or_file, "w", newline="") if own else path_or_file  # type: ignore[arg-type]  # noqa: SIM115
        rows = 0
        try:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(
                [
                    "timestamp",
                    "node",
                    "gpu_uuid",
                    "gpu_model",
                    "util_pct",
                    "sm_active",
                    "mem_used_mib",
                    "mem_total_mib",
                    "power_w",
                    "job",
                    "project",
                    "team",
                ]
            )
            for c0, c1 in self._chunks(start, end, interval):
                ts_all = self._ts_grid(c0, c1, interval)
                per_ts: dict[float, list[list[Any]]] = {}
                for node in self.nodes:
                    ts, arrays, segs = self._node_block(node, ts_all)
                    uuids = node.gpu_uuids()
                    tl = ts.tolist()
                    for gi, arr in enumerate(arrays):
                        u, s, mm, p = (
                            arr[k].tolist()
                            for k in ("util_pct", "sm_active", "mem_used_mib", "power_w")
                        )
                        jobs_at = self._job_index(ts, segs[gi])
                        for i, t in enumerate(tl):
                            j = jobs_at[i]
                            per_ts.setdefault(t, []).append(
                                [
                                    int(t) if t == int(t) else t,
                                    node.hostname,
                                    uuids[gi],
                                    node.gpu_model,
                                    u[i],
                                    s[i],
                                    int(mm[i]),
                                    node.mem_total,
                                    p[i],
                                    j.job_id if j else "",
                                    j.project if j else "",
                                    j.team if j else "",
                                ]
                            )
                for t in sorted(per_ts):
                    w.writerows(per_ts[t])
                    rows += len(per_ts[t])
        finally:
            if own:
                fh.close()
        return rows

    @staticmethod
    def _job_index(ts: np.ndarray, segs: list[_Resolved]) -> list[Job | None]:
        out: list[Job | None] = [None] * len(ts)
        for r in segs:
            a = int(np.searchsorted(ts, r.job.start, side="left"))
            b = int(np.searchsorted(ts, r.job.end, side="left"))
            out[a:b] = [r.job] * (b - a)
        return out


DEMO_PROJECTS: tuple[ProjectSpec, ...] = (
    ProjectSpec("llm-pretrain", "nlp", ("alice", "bob", "chen"), TRAINING_KINDS, 2.5),
    ProjectSpec("llm-finetune", "nlp", ("dana", "erik"), TRAINING_KINDS, 1.5),
    ProjectSpec("rag-serving", "nlp", ("farah", "gus"), SERVING_KINDS, 1.2),
    ProjectSpec("detector-train", "vision", ("hana", "ivan", "jo"), TRAINING_KINDS, 1.2),
    ProjectSpec("video-gen", "vision", ("kai", "lena"), TRAINING_KINDS, 1.0),
    ProjectSpec("labeling-infer", "vision", ("mo", "nina"), SERVING_KINDS, 0.8),
    ProjectSpec("protein-fold", "research", ("omar", "pia"), TRAINING_KINDS, 0.8),
    ProjectSpec("rl-agents", "research", ("quinn", "ravi", "sara"), TRAINING_KINDS, 0.8),
)


def demo_fleet(*, seed: int | str = 42) -> Fleet:
    """The demo organisation: clusters ``alpha`` (8 x H100 nodes ``gpu-a-001..008``) and
    ``beta`` (5 x A100 ``gpu-b-001..005`` and 3 x L40S ``gpu-b-006..008``), 8 GPUs each,
    3 teams (nlp, vision, research) with 8 projects (:data:`DEMO_PROJECTS`)."""
    nodes = [
        NodeSpec(f"gpu-a-{i:03d}", "alpha", "NVIDIA H100 80GB HBM3", 8, 81559) for i in range(1, 9)
    ]
    nodes += [
        NodeSpec(f"gpu-b-{i:03d}", "beta", "NVIDIA A100-SXM4-80GB", 8, 81920) for i in range(1, 6)
    ]
    nodes += [NodeSpec(f"gpu-b-{i:03d}", "beta", "NVIDIA L40S", 8, 46068) for i in range(6, 9)]
    return Fleet(seed=seed, nodes=nodes, projects=list(DEMO_PROJECTS))


class SimSource:
    """``--source sim``: one node of the demo fleet (or a standalone node) in real time."""

    name = "sim"

    def __init__(
        self,
        *,
        seed: int | str = 42,
        hostname: str,
        gpus: int = 8,
        model: str = "NVIDIA H100 80GB HBM3",
    ) -> None:
        fleet = demo_fleet(seed=seed)
        if hostname not in {n.hostname for n in fleet.nodes}:
            fleet = Fleet(
                seed=seed,
                nodes=[NodeSpec(hostname, "sim", model, gpus)],
                projects=list(DEMO_PROJECTS),
            )
        self.fleet = fleet
        self.hostname = hostname

    def read(self, *, now: float) -> tuple[list[GpuInfo], list[Reading]]:
        return self.fleet.readings(hostname=self.hostname, ts=now)

    def close(self) -> None:
        pass


__all__ = [
    "KINDS",
    "MODELS",
    "Fleet",
    "Job",
    "NodeSpec",
    "ProjectSpec",
    "Silence",
    "SimSource",
    "demo_fleet",
    "gpu_uuid",
]
