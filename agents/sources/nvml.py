"""NVML source (pynvml). The nvml module is injectable so tests run against a fake.

Utilization is the mean of NVML's own utilization samples since the previous read
(``nvmlDeviceGetSamples(..., NVML_GPU_UTILIZATION_SAMPLES, last_seen)``), not one
instantaneous reading. The first read of a GPU takes the samples of the last
``first_window_s`` only: NVML's buffer reaches back before the agent started (an H200 keeps
71 samples, 14 s), and a job that just ended would show up in the new agent's first sample.
NVML sample timestamps are epoch microseconds (an H200 samples every 200 ms; measured).
Every call may fail with ``NVMLError`` (``NOT_SUPPORTED`` on MIG, older GPUs, vGPU); the
field is then null, never a crash.

Idle-100 % quirk: some boards (the L40S capture) report 100 % utilization with no process
and 0 MiB used. A kernel cannot run without a context, so when the process list is known
to be empty and memory used is below :data:`NO_CONTEXT_MIB` at this read *and* the one
before, ``util_pct`` is reported as 0 and the GPU carries the note ``util_no_context`` so
pages can say why. One empty read is not enough: a job that ended during the interval was
busy for part of it, and its samples are real (on a real H200, memory used reads 0 MiB the
moment the job's context is gone).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from agents.sources import GpuInfo, Reading

log = logging.getLogger(__name__)
NO_CONTEXT_MIB = 64


class NvmlSource:
    """Reads every GPU (and MIG instance) once per tick."""

    name = "nvml"

    def __init__(self, *, nvml: Any = None, first_window_s: float = 10.0) -> None:
        if nvml is None:
            import pynvml as nvml
        self.nvml = nvml
        nvml.nvmlInit()
        self._last_seen: dict[str, int] = {}
        self.first_window_s = first_window_s
        self._had_context: dict[str, bool] = {}
        self._mem_v2 = hasattr(nvml, "nvmlMemory_v2")
        # XIDs arrive as events, not as a readable value: register each device once and
        # drain the event set without blocking every tick. The last XID per GPU is reported
        # (0 = none since start, like dcgm-exporter's DCGM_FI_DEV_XID_ERRORS gauge).
        self._events: Any = self._try(nvml.nvmlEventSetCreate)
        self._registered: set[str] = set()
        self._xid: dict[str, int] = {}

    def _try(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except self.nvml.NVMLError:
            return None

    @staticmethod
    def _s(v: Any) -> Any:
        return v.decode() if isinstance(v, bytes) else v

    def _util(self, uuid: str, handle: Any, now: float) -> float | None:
        n = self.nvml
        last = self._last_seen.get(uuid)
        if last is None:
            last = max(0, int((now - self.first_window_s) * 1e6))
        try:
            _vtype, samples = n.nvmlDeviceGetSamples(handle, n.NVML_GPU_UTILIZATION_SAMPLES, last)
        except n.NVMLError as exc:
            if getattr(exc, "value", None) == n.NVML_ERROR_NOT_SUPPORTED:
                return None
            samples = []  # NOT_FOUND: no new sample since ``last``
        fresh = [s for s in samples if s.timeStamp > last]
        if fresh:
            self._last_seen[uuid] = max(s.timeStamp for s in fresh)
            return round(sum(float(s.sampleValue.uiVal) for s in fresh) / len(fresh), 1)
        rates = self._try(n.nvmlDeviceGetUtilizationRates, handle)
        return float(rates.gpu) if rates is not None else None

    def _memory(self, handle: Any) -> Any:
        """Memory info as nvidia-smi shows it: v2, whose ``used`` leaves out the driver's
        reservation. v1 counts it as used (615 MiB on an idle H200, measured), which would
        make every idle GPU look like it holds memory; drivers before R510 only have v1."""
        n = self.nvml
        if self._mem_v2:
            try:
                return n.nvmlDeviceGetMemoryInfo(handle, version=n.nvmlMemory_v2)
            except n.NVMLError as exc:
                if getattr(exc, "value", None) == n.NVML_ERROR_FUNCTION_NOT_FOUND:
                    self._mem_v2 = False  # old driver: never ask again
        return self._try(n.nvmlDeviceGetMemoryInfo, handle)

    def _register_xid(self, uuid: str, handle: Any) -> None:
        if self._events is None or uuid in self._registered:
            return
        self._registered.add(uuid)
        try:
            self.nvml.nvmlDeviceRegisterEvents(
                handle, self.nvml.nvmlEventTypeXidCriticalError, self._events
            )
            self._xid.setdefault(uuid, 0)
        except self.nvml.NVMLError:
            pass  # not supported (MIG instances, some vGPUs): xid stays null

    def _drain_xids(self) -> None:
        n = self.nvml
        if self._events is None:
            return
        for _ in range(1000):  # bounded: a storm of events must not stall sampling
            try:
                ev = n.nvmlEventSetWait_v2(self._events, 0)
            except n.NVMLError:
                return  # NVML_ERROR_TIMEOUT: nothing pending
            if ev.eventType == n.nvmlEventTypeXidCriticalError:
                uuid = self._s(self._try(n.nvmlDeviceGetUUID, ev.device))
                if uuid:
                    self._xid[uuid] = int(ev.eventData)
                    log.warning("XID %s on %s", ev.eventData, uuid)

    def _device(
        self, handle: Any, index: int, parent: str | None, now: float
    ) -> tuple[GpuInfo, Reading]:
        n = self.nvml
        uuid = self._s(n.nvmlDeviceGetUUID(handle))
        self._register_xid(uuid, handle)
        mem = self._memory(handle)
        procs_raw = self._try(n.nvmlDeviceGetComputeRunningProcesses, handle)
        procs = (
            None
            if procs_raw is None
            else [
                {
                    "pid": int(p.pid),
                    "mem_used_mib": (int(p.usedGpuMemory) // 2**20) if p.usedGpuMemory else None,
                }
                for p in procs_raw
            ]
        )
        name = self._s(self._try(n.nvmlDeviceGetName, handle))
        profile = None
        if parent is not None and name and "MIG" in name:
            profile = name.split("MIG", 1)[1].strip()  # "NVIDIA H100 80GB HBM3 MIG 3g.40gb"
        info = GpuInfo(
            uuid=uuid,
            index=index,
            model=name,
            mem_total_mib=int(mem.total // 2**20) if mem is not None else None,
            mig_parent=parent,
            mig_profile=profile,
            processes=procs,
        )
        used = int(mem.used // 2**20) if mem is not None else None
        util = self._util(uuid, handle, now)
        no_context = procs == [] and used is not None and used < NO_CONTEXT_MIB
        if util and no_context and not self._had_context.get(uuid, False):
            info.notes.append("util_no_context")
            util = 0.0
        self._had_context[uuid] = not no_context
        power = self._try(n.nvmlDeviceGetPowerUsage, handle)
        energy = self._try(n.nvmlDeviceGetTotalEnergyConsumption, handle)
        values = {
            "util_pct": util,
            "mem_used_mib": used,
            "power_w": round(power / 1000, 1) if power is not None else None,
            "temp_c": self._try(n.nvmlDeviceGetTemperature, handle, n.NVML_TEMPERATURE_GPU),
            "sm_clock_mhz": self._try(n.nvmlDeviceGetClockInfo, handle, n.NVML_CLOCK_SM),
            "energy_mj": energy,
            "xid": self._xid.get(uuid),
        }
        ecc = self._try(
            n.nvmlDeviceGetTotalEccErrors,
            handle,
            n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
            n.NVML_VOLATILE_ECC,
        )
        if ecc:
            info.notes.append(f"ecc_uncorrected_volatile={ecc}")
        return info, Reading(gpu=uuid, ts=now, values=values)

    def read(self, *, now: float) -> tuple[list[GpuInfo], list[Reading]]:
        n = self.nvml
        gpus: list[GpuInfo] = []
        readings: list[Reading] = []
        self._drain_xids()
        for i in range(n.nvmlDeviceGetCount()):
            handle = n.nvmlDeviceGetHandleByIndex(i)
            info, reading = self._device(handle, i, None, now)
            mode = self._try(n.nvmlDeviceGetMigMode, handle)
            if mode is not None and mode[0] == n.NVML_DEVICE_MIG_ENABLE:
                # The parent's utilization is N/A under MIG; its instances are the devices.
                gpus.append(info)
                count = self._try(n.nvmlDeviceGetMaxMigDeviceCount, handle) or 0
                for m in range(count):
                    mh = self._try(n.nvmlDeviceGetMigDeviceHandleByIndex, handle, m)
                    if mh is None:
                        continue  # slot not populated
                    mi, mr = self._device(mh, m, info.uuid, now)
                    gpus.append(mi)
                    readings.append(mr)
                continue
            gpus.append(info)
            readings.append(reading)
        return gpus, readings

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except Exception:  # shutting down a half-initialised library is best effort
            log.debug("nvmlShutdown failed", exc_info=True)
