"""Metric sources: each turns one tick into GPU descriptions and readings.

A source implements :class:`Source` (``read(now=...)`` and ``close()``). Sources that know
who holds a GPU (the simulator, replay, dcgm-exporter with pod labels) set
``Reading.alloc`` and ``Reading.attributed``; the agent's attribution chain fills the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

Alloc = dict[str, Any]  # {"job": "slurm:1", "project": "x", "user": "alice"}


@dataclass(slots=True)
class GpuInfo:
    """A physical GPU or MIG instance as described in the payload's ``gpus`` list."""

    uuid: str
    index: int
    model: str | None
    mem_total_mib: int | None
    mig_parent: str | None = None
    mig_profile: str | None = None
    processes: list[dict[str, Any]] | None = None  # [{"pid", "mem_used_mib"}], None if unknown
    labels: dict[str, str] = field(default_factory=dict)  # source-specific, never sent
    notes: list[str] = field(default_factory=list)  # sent as an optional extra

    def to_payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "uuid": self.uuid,
            "index": self.index,
            "model": self.model,
            "mem_total_mib": self.mem_total_mib,
            "mig_parent": self.mig_parent,
            "mig_profile": self.mig_profile,
        }
        if self.processes is not None:
            out["processes"] = self.processes
        if self.notes:
            out["notes"] = self.notes
        return out


@dataclass(slots=True)
class Reading:
    """One sample: one GPU at one timestamp. ``values`` maps payload field -> value/None."""

    gpu: str
    ts: float
    values: dict[str, Any]
    alloc: Alloc | None = None
    attributed: bool = False  # True when the source already decided ``alloc``


class Source(Protocol):
    """What the agent needs from a source."""

    name: str

    def read(self, *, now: float) -> tuple[list[GpuInfo], list[Reading]]:
        """Return the GPUs seen and the readings taken since the previous call."""
        ...

    def close(self) -> None: ...


class SourceError(RuntimeError):
    """A source could not produce readings this tick (logged, counted, never fatal)."""
