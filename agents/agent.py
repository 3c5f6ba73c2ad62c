"""The agent loop: sample every interval, seal batches into the spool, flush the spool.

Sampling never waits for the network: a failed push only moves ``next_attempt`` into the
future, and the loop keeps sampling and spooling meanwhile. Time comes from an injected
clock, waiting from an injected ``wait`` (``threading.Event.wait`` in production), so tests
drive the loop tick by tick without sleeping.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agents.attribution import Attributor
from agents.payload import build_payloads
from agents.push import Pusher
from agents.sources import GpuInfo, Reading, Source
from agents.spool import Spool

log = logging.getLogger(__name__)
MAX_PENDING = 100_000  # readings held in memory while the spool cannot be written


@dataclass(slots=True)
class Stats:
    """Self-reporting, sent with every batch as ``agent.stats`` and logged."""

    collected: int = 0
    sent: int = 0
    spooled: int = 0
    dropped: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "collected": self.collected,
            "sent": self.sent,
            "spooled": self.spooled,
            "dropped": self.dropped,
            "last_error": self.last_error,
        }


class Agent:
    """One node agent. Call :meth:`tick` repeatedly, or :meth:`run` to loop."""

    def __init__(
        self,
        *,
        node: str,
        source: Source,
        spool: Spool,
        pusher: Pusher | None,
        attributor: Attributor | None = None,
        interval_s: float = 10.0,
        batch_seconds: float | None = None,
        clock: Callable[[], float] = time.time,
        flush_budget_s: float | None = None,
    ) -> None:
        self.node = node
        self.source = source
        self.spool = spool
        self.pusher = pusher
        self.attributor = attributor
        self.interval_s = interval_s
        self.batch_seconds = batch_seconds or interval_s
        self.clock = clock
        # Catching up after an outage must not starve sampling: flush for at most this long.
        self.flush_budget_s = (
            flush_budget_s if flush_budget_s is not None else max(interval_s / 2, 0.05)
        )
        self.last_error: str | None = None
        self.lost_in_memory = 0  # dropped because neither the spool nor memory could hold them
        self.next_attempt = 0.0
        self._pending: list[Reading] = []
        self._pending_since: float | None = None
        self._gpus: list[GpuInfo] = []
        self._last_log = 0.0

    # -- stats ---------------------------------------------------------------------------
    def stats(self) -> Stats:
        c = self.spool.counters()
        return Stats(
            collected=c["collected"] + len(self._pending),
            sent=c["sent"],
            spooled=c["spooled"],
            dropped=c["dropped"] + self.lost_in_memory,
            last_error=self.last_error,
        )

    # -- steps ---------------------------------------------------------------------------
    def sample(self, *, now: float) -> int:
        """Read the source once and queue the readings for the next batch."""
        try:
            gpus, readings = self.source.read(now=now)
        except Exception as exc:  # a broken driver/exporter must not kill the agent
            self.last_error = f"source {self.source.name}: {exc}"
            log.error("%s", self.last_error)
            return 0
        if self.attributor is not None:
            todo = [r for r in readings if not r.attributed]
            if todo:
                try:
                    allocs = self.attributor.attribute(gpus=gpus)
                except Exception as exc:
                    self.last_error = f"attribution: {exc}"
                    log.error("%s", self.last_error)
                    allocs = {}
                for r in todo:
                    r.alloc = allocs.get(r.gpu)
        self._gpus = gpus or self._gpus
        if readings and self._pending_since is None:
            self._pending_since = now
        self._pending.extend(readings)
        return len(readings)

    def seal(self, *, now: float, force: bool = False) -> list[dict[str, Any]]:
        """Turn pending readings into batches in the spool once ``batch_seconds`` passed."""
        if not self._pending or self._pending_since is None:
            return []
        # The last sample of a batch is taken at since + batch_seconds - interval; half an
        # interval of tolerance absorbs jitter (batch_seconds == interval seals every tick).
        if not force and now - self._pending_since < self.batch_seconds - self.interval_s * 1.5:
            return []
        payloads = build_payloads(
            node=self.node,
            source=self.source.name,
            interval_s=self.interval_s,
            gpus=self._gpus,
            readings=self._pending,
        )
        try:
            for p in payloads:
                self.spool.put(p, now=now)
        except Exception as exc:  # disk full, read-only fs: keep readings, retry next tick
            self.last_error = f"spool: {exc}"
            log.error("%s", self.last_error)
            if len(self._pending) > MAX_PENDING:  # memory is the last buffer; bound it too
                lost = len(self._pending) - MAX_PENDING
                self._pending = self._pending[lost:]
                self.lost_in_memory += lost
            return []
        self._pending, self._pending_since = [], None
        return payloads

    def flush(self, *, now: float) -> int:
        """Send spooled batches oldest first until empty, a failure, or the time budget."""
        if self.pusher is None or now < self.next_attempt:
            return 0
        sent = 0
        deadline = time.monotonic() + self.flush_budget_s
        while time.monotonic() <= deadline:
            batches = self.spool.peek(limit=1)
            if not batches:
                break
            batch = batches[0]
            payload = batch.payload
            payload["agent"]["stats"] = self.stats().as_dict()
            result = self.pusher.send(payload)
            if result.outcome == "ok":
                self.spool.ack(batch)
                sent += 1
                if self.last_error and self.last_error.startswith("push"):
                    log.info(
                        "server reachable again; %d samples still spooled", self.stats().spooled
                    )
                    self.last_error = None
            elif result.outcome == "reject":
                self.spool.reject(batch, status=result.status, reason=result.detail)
                self.last_error = f"push rejected {batch.batch_id}: {result.detail}"
                log.error(
                    "%s (set aside in the spool's rejected table, not retried)", self.last_error
                )
            else:
                self.last_error = f"push: {result.detail}"
                self.next_attempt = now + result.delay_s
                log.warning("%s; retry in %.1f s", self.last_error, result.delay_s)
                break
        return sent

    def tick(
        self, *, now: float | None = None, stamp: float | None = None, force_seal: bool = False
    ) -> None:
        """One sampling step: sample, seal if due, flush if due, log stats now and then.

        ``stamp`` is the time the readings carry (the scheduled grid instant), ``now`` by
        default."""
        now = self.clock() if now is None else now
        self.sample(now=now if stamp is None else stamp)
        self.seal(now=now, force=force_seal)
        try:
            self.flush(now=now)
        except Exception as exc:  # e.g. the spool database went away; never kill the loop
            self.last_error = f"flush: {exc}"
            log.exception("flush failed")
        if now - self._last_log >= 300:
            self._last_log = now
            log.info("stats %s", self.stats().as_dict())

    def run(
        self,
        *,
        stop: threading.Event | None = None,
        wait: Callable[[float], Any] | None = None,
        max_ticks: int | None = None,
    ) -> None:
        """Loop until ``stop`` is set (or ``max_ticks`` samples were taken)."""
        stop = stop or threading.Event()
        wait = wait or stop.wait
        next_sample = self.clock()
        ticks = 0
        # A replay at speed 0 ticks back to back instead of once per interval.
        pace = 0.0 if getattr(self.source, "fast", False) else self.interval_s
        if pace:
            # Sample on the interval grid, multiples of the interval since the epoch, like
            # Prometheus aligning scrape timestamps: every node's samples line up, and the
            # server sums samples on the grid without sorting them (rollups, "Grid path").
            next_sample = math.ceil(next_sample / pace) * pace
        while not stop.is_set():
            now = self.clock()
            if now >= next_sample:
                # An on-time tick (a few milliseconds late) carries its grid instant; a late
                # one (a suspend, a slow source) its own time.
                on_time = bool(pace) and now - next_sample < pace / 2
                self.tick(now=now, stamp=next_sample if on_time else None)
                ticks += 1
                if max_ticks is not None and ticks >= max_ticks:
                    break
                if getattr(self.source, "exhausted", False):
                    break
                next_sample += pace
                if next_sample <= now and pace:  # fell behind (suspend, slow disk): no burst
                    next_sample = now + pace
            elif len(self.spool) and now >= self.next_attempt:
                self.flush(now=now)
            wake = next_sample
            if len(self.spool) and self.next_attempt > now:
                wake = min(wake, self.next_attempt)
            wait(max(0.0, wake - self.clock()))
        # On shutdown seal what we have so nothing collected is lost; it is sent next start.
        self.seal(now=self.clock(), force=True)
        self.flush(now=self.clock())
