"""Replay a wide CSV (``manage.py import_samples`` format) as if it were live.

Rows must be ordered by timestamp (``Fleet.write_csv`` writes them so). ``speed`` scales
time (2 = twice as fast); ``speed=0`` sends as fast as possible (one batch per tick).
``shift="now"`` moves all timestamps so that the first row happens at start-up.
"""

from __future__ import annotations

import csv
import time
from datetime import datetime
from typing import Any

from agents.sources import GpuInfo, Reading

_FIELDS = (("util_pct", float), ("sm_active", float), ("mem_used_mib", int), ("power_w", float))
FAST_ROWS = 10_000


def _ts(v: str) -> float:
    try:
        return float(v)
    except ValueError:
        return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()


class ReplaySource:
    name = "replay"

    def __init__(
        self,
        *,
        path: str,
        speed: float = 1.0,
        shift: str = "original",
        node: str | None = None,
        clock: Any = time.time,
    ) -> None:
        self._fh = open(path, newline="")  # noqa: SIM115 (closed in close())
        self._rows = csv.DictReader(self._fh)
        self.speed = speed
        self.shift = shift
        self.node = node
        self._t_start = clock()
        self._first: float | None = None
        self._pending: dict[str, Any] | None = None
        self._gpus: dict[str, GpuInfo] = {}
        self.exhausted = False
        self.fast = speed == 0

    def _next(self) -> dict[str, Any] | None:
        if self._pending is not None:
            row, self._pending = self._pending, None
            return row
        for row in self._rows:
            if self.node and row.get("node") != self.node:
                continue
            return row
        self.exhausted = True
        return None

    def read(self, *, now: float) -> tuple[list[GpuInfo], list[Reading]]:
        out: list[Reading] = []
        while True:
            row = self._next()
            if row is None:
                break
            t = _ts(row["timestamp"])
            if self._first is None:
                self._first = t
            if self.speed > 0 and self._first + (now - self._t_start) * self.speed < t:
                self._pending = row
                break
            if self.speed == 0 and len(out) >= FAST_ROWS:
                self._pending = row
                break
            offset = (self._t_start - self._first) if self.shift == "now" else 0.0
            uuid = row["gpu_uuid"]
            if uuid not in self._gpus:
                total = row.get("mem_total_mib") or ""
                self._gpus[uuid] = GpuInfo(
                    uuid=uuid,
                    index=len(self._gpus),
                    model=row.get("gpu_model") or None,
                    mem_total_mib=int(float(total)) if total else None,
                )
            values = {
                f: (conv(float(row[f])) if row.get(f) not in (None, "") else None)
                for f, conv in _FIELDS
            }
            job = row.get("job") or ""
            alloc = None
            if job:
                alloc = {
                    "job": job if ":" in job else f"csv:{job}",
                    "project": row.get("project") or None,
                    "user": None,
                }
            out.append(
                Reading(gpu=uuid, ts=t + offset, values=values, alloc=alloc, attributed=True)
            )
        return list(self._gpus.values()), out

    def close(self) -> None:
        self._fh.close()
