"""Build contract payloads (DESIGN.md, ``POST /api/v1/samples``) from readings.

Readings become columnar series: one entry per GPU and job, one array per field. Batches
larger than the server's limits (10,000 samples, 8 MiB decompressed) are split here so the
server never has to answer 413 for something the agent could have avoided.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from typing import Any

from agents import __version__
from agents.sources import GpuInfo, Reading

FIELDS = (
    "util_pct",
    "sm_active",
    "sm_occupancy",
    "tensor_active",
    "dram_active",
    "gr_engine_active",
    "mem_used_mib",
    "power_w",
    "temp_c",
    "sm_clock_mhz",
    "energy_mj",
    "xid",
)
MAX_SAMPLES = 10_000
MAX_BYTES = 8 * 1024 * 1024


def new_batch_id() -> str:
    """A random id the server uses to recognise a batch it has already seen."""
    return uuid.uuid4().hex


def _ts_out(ts: float) -> float | int:
    # Whole seconds travel as integers (smaller, and what the server expects); sub-second
    # intervals (tests, demos) keep milliseconds.
    r = round(ts, 3)
    return int(r) if r == int(r) else r


def build_series(readings: Iterable[Reading]) -> list[dict[str, Any]]:
    """Group readings into series entries (GPU, then time; a new entry when the job changes).

    Timestamps are made strictly increasing per entry (a repeated timestamp keeps the last
    reading). Fields no reading of an entry reports are left out; a single missing value is
    ``null``.
    """
    rows = sorted(readings, key=lambda r: (r.gpu, r.ts))
    series: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    cur_key: tuple[str, Any] | None = None
    cur_rows: list[Reading] = []

    def close() -> None:
        if cur is None:
            return
        keys = [f for f in FIELDS if any(r.values.get(f) is not None for r in cur_rows)]
        cur["ts"] = [_ts_out(r.ts) for r in cur_rows]
        for f in keys:
            cur[f] = [r.values.get(f) for r in cur_rows]
        series.append(cur)

    for r in rows:
        job = (r.alloc or {}).get("job")
        key = (r.gpu, job)
        if key != cur_key:
            close()
            cur, cur_key, cur_rows = {"gpu": r.gpu, "alloc": r.alloc}, key, []
        if cur_rows and _ts_out(cur_rows[-1].ts) == _ts_out(r.ts):
            cur_rows[-1] = r
        else:
            cur_rows.append(r)
    close()
    return series


def build_payloads(
    *,
    node: str,
    source: str,
    interval_s: float,
    gpus: list[GpuInfo],
    readings: list[Reading],
    max_samples: int = MAX_SAMPLES,
    max_bytes: int = MAX_BYTES,
) -> list[dict[str, Any]]:
    """Return one or more payloads (without ``agent.stats``, added at send time).

    Splits by sample count first, then halves any chunk whose JSON is still too big.
    """
    if not readings:
        return []
    rows = sorted(readings, key=lambda r: (r.ts, r.gpu))
    chunks = [rows[i : i + max_samples] for i in range(0, len(rows), max_samples)]
    out: list[dict[str, Any]] = []
    gpu_payload = [g.to_payload() for g in gpus]
    while chunks:
        chunk = chunks.pop(0)
        payload = {
            "node": node,
            "batch_id": new_batch_id(),
            "agent": {"version": __version__, "source": source, "interval_s": interval_s},
            "gpus": gpu_payload,
            "series": build_series(chunk),
        }
        if len(chunk) > 1 and len(json.dumps(payload, separators=(",", ":"))) > max_bytes:
            half = len(chunk) // 2
            chunks[:0] = [chunk[:half], chunk[half:]]
            continue
        out.append(payload)
    return out


def count_samples(payload: dict[str, Any]) -> int:
    """Samples in a payload: one GPU at one timestamp."""
    return sum(len(s["ts"]) for s in payload.get("series", []))
