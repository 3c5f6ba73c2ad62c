"""A fake of the pynvml functions the NVML source uses, fed from real ``nvidia-smi -q``
captures (``/work/shared/fixtures/nvidia-smi``). Where the capture says N/A the fake raises
``pynvml.NVMLError(NVML_ERROR_NOT_SUPPORTED)`` like the real library does."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import SimpleNamespace

import pynvml

NVMLError = pynvml.NVMLError
NVML_GPU_UTILIZATION_SAMPLES = pynvml.NVML_GPU_UTILIZATION_SAMPLES
NVML_ERROR_NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
NVML_ERROR_NOT_FOUND = pynvml.NVML_ERROR_NOT_FOUND
NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU
NVML_CLOCK_SM = pynvml.NVML_CLOCK_SM
NVML_DEVICE_MIG_ENABLE = pynvml.NVML_DEVICE_MIG_ENABLE
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
NVML_VOLATILE_ECC = pynvml.NVML_VOLATILE_ECC
NVML_ERROR_TIMEOUT = pynvml.NVML_ERROR_TIMEOUT
NVML_ERROR_FUNCTION_NOT_FOUND = pynvml.NVML_ERROR_FUNCTION_NOT_FOUND
nvmlMemory_v2 = pynvml.nvmlMemory_v2
nvmlEventTypeXidCriticalError = pynvml.nvmlEventTypeXidCriticalError
MIB = 2**20


def _ns() -> None:
    raise NVMLError(NVML_ERROR_NOT_SUPPORTED)


@dataclass
class Dev:
    uuid: str
    name: str
    mem_total: int | None
    mem_used: int | None
    util: int | None
    power_mw: int | None
    temp: int | None
    sm_clock: int | None
    procs: list[tuple[int, int]] | None
    mem_reserved: int = 0  # driver/firmware reservation: nvidia-smi's "Reserved"
    mem_v2: bool = True  # drivers before R510 lack nvmlDeviceGetMemoryInfo_v2
    mig: bool = False
    children: list[Dev] = field(default_factory=list)
    util_samples: list[tuple[int, int]] = field(default_factory=list)  # (µs timestamp, %)


def _num(v: str) -> int | None:
    m = re.match(r"\s*([\d.]+)", v)
    return None if m is None else int(float(m.group(1)))


def parse_capture(text: str, phase: str) -> Dev:
    """Build a device from the ``<phase> :: query (-q)`` section (and ``-L`` for MIG UUIDs)."""
    sec = text.split(f"# {phase} :: query (-q)")[1].split("#####\n# ")[0]
    lines = sec.splitlines()

    def after(header: str, key: str, start: int = 0) -> str:
        i = next(k for k in range(start, len(lines)) if lines[k].strip() == header)
        for ln in lines[i + 1 :]:
            k, _, v = ln.partition(":")
            if k.strip() == key:
                return v.strip()
        raise KeyError(key)

    def top(key: str) -> str:
        for ln in lines:
            k, _, v = ln.partition(":")
            if k.strip() == key:
                return v.strip()
        raise KeyError(key)

    util = after("Utilization", "GPU")
    procs = []
    pid = None
    for ln in lines:
        k, _, v = ln.partition(":")
        if k.strip() == "Process ID":
            pid = int(v)
        elif k.strip() == "Used GPU Memory" and pid is not None:
            procs.append((pid, _num(v) * MIB))
    power = after("GPU Power Readings", "Average Power Draw")
    dev = Dev(
        uuid=top("GPU UUID"),
        name=top("Product Name"),
        mem_total=_num(after("FB Memory Usage", "Total")) * MIB,
        mem_used=_num(after("FB Memory Usage", "Used")) * MIB,
        mem_reserved=_num(after("FB Memory Usage", "Reserved")) * MIB,
        util=None if "N/A" in util else _num(util),
        power_mw=None if "N/A" in power else int(float(power.split()[0]) * 1000),
        temp=_num(after("Temperature", "GPU Current Temp")),
        sm_clock=_num(after("Clocks", "SM")),
        procs=procs,
    )
    mig_uuids = re.findall(r"MIG (\S+)\s+Device\s+(\d+): \(UUID: (MIG-[^)]+)\)", text)
    if after("MIG Mode", "Current") == "Enabled":
        dev.mig = True
        blocks = sec.split("    MIG Device\n")[1:]
        for (profile, _idx, muuid), blk in zip(mig_uuids, blocks, strict=False):
            total = _num(re.search(r"Shared FB Memory Usage\s+Total\s+:\s*(\d+)", blk).group(1))
            used = _num(
                re.search(r"Used\s+:\s*(\d+) MiB", blk.split("Shared FB Memory Usage")[1]).group(1)
            )
            gi = int(re.search(r"GPU Instance ID\s+:\s*(\d+)", blk).group(1))
            child_procs = (
                [(p, m) for p, m in procs if f"GPU instance ID                   : {gi}" in sec]
                if gi == 2
                else []
            )
            dev.children.append(
                Dev(
                    uuid=muuid,
                    name=f"{dev.name} MIG {profile}",
                    mem_total=total * MIB,
                    mem_used=used * MIB,
                    util=None,
                    power_mw=None,
                    temp=None,
                    sm_clock=None,
                    procs=child_procs,
                )
            )
    if dev.util is not None:
        dev.util_samples = [(1_000_000 + i * 166_000, dev.util) for i in range(6)]
    return dev


class FakeNvml:
    """Module-like object: ``FakeNvml([dev, ...])`` exposes nvml* functions over the devices."""

    NVMLError = NVMLError

    def __init__(self, devices: list[Dev]) -> None:
        self.devices = devices
        self.inited = False
        self.pending_events: list[SimpleNamespace] = []  # push XIDs here
        self.registered: list[str] = []
        for k, v in globals().items():
            if k.startswith(("NVML_", "nvmlEventType", "nvmlMemory")):
                setattr(self, k, v)

    def nvmlInit(self) -> None:
        self.inited = True

    def nvmlShutdown(self) -> None:
        self.inited = False

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> Dev:
        return self.devices[i]

    def nvmlDeviceGetUUID(self, d: Dev) -> str:
        return d.uuid

    def nvmlDeviceGetName(self, d: Dev) -> str:
        return d.name

    def nvmlDeviceGetMemoryInfo(self, d: Dev, version: int | None = None):
        """v1 counts the reserved memory as used, as the real driver does (an idle H200 reads
        615 MiB used by v1 and 0 MiB by v2 and nvidia-smi); v2 reports it apart."""
        if d.mem_total is None:
            _ns()
        free = d.mem_total - d.mem_used - d.mem_reserved
        if version is None:
            return SimpleNamespace(total=d.mem_total, used=d.mem_total - free, free=free)
        if not d.mem_v2:
            raise NVMLError(NVML_ERROR_FUNCTION_NOT_FOUND)
        return SimpleNamespace(
            version=version, total=d.mem_total, reserved=d.mem_reserved, free=free, used=d.mem_used
        )

    def nvmlDeviceGetSamples(self, d: Dev, kind: int, last: int):
        assert kind == NVML_GPU_UTILIZATION_SAMPLES
        if d.util is None:
            _ns()
        fresh = [s for s in d.util_samples if s[0] > last]
        if not fresh:
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        return 1, [
            SimpleNamespace(timeStamp=t, sampleValue=SimpleNamespace(uiVal=v)) for t, v in fresh
        ]

    def nvmlDeviceGetUtilizationRates(self, d: Dev):
        if d.util is None:
            _ns()
        return SimpleNamespace(gpu=d.util, memory=0)

    def nvmlDeviceGetPowerUsage(self, d: Dev) -> int:
        return d.power_mw if d.power_mw is not None else _ns()

    def nvmlDeviceGetTotalEnergyConsumption(self, d: Dev) -> int:
        _ns()

    def nvmlDeviceGetTemperature(self, d: Dev, sensor: int) -> int:
        return d.temp if d.temp is not None else _ns()

    def nvmlDeviceGetClockInfo(self, d: Dev, clock: int) -> int:
        return d.sm_clock if d.sm_clock is not None else _ns()

    def nvmlDeviceGetComputeRunningProcesses(self, d: Dev):
        if d.procs is None:
            _ns()
        return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in d.procs]

    def nvmlDeviceGetTotalEccErrors(self, d: Dev, etype: int, counter: int) -> int:
        return 0

    def nvmlEventSetCreate(self) -> object:
        return object()

    def nvmlDeviceRegisterEvents(self, d: Dev, types: int, evset: object) -> None:
        if d.util is None:  # like MIG instances: events not supported
            _ns()
        self.registered.append(d.uuid)

    def nvmlEventSetWait_v2(self, evset: object, timeout_ms: int):
        if not self.pending_events:
            raise NVMLError(NVML_ERROR_TIMEOUT)
        return self.pending_events.pop(0)

    def xid(self, d: Dev, code: int) -> None:
        self.pending_events.append(
            SimpleNamespace(device=d, eventType=nvmlEventTypeXidCriticalError, eventData=code)
        )

    def nvmlDeviceGetMigMode(self, d: Dev):
        if not d.mig and not d.children and d.util is None:
            _ns()
        return (1, 1) if d.mig else (0, 0)

    def nvmlDeviceGetMaxMigDeviceCount(self, d: Dev) -> int:
        return 7 if d.mig else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, d: Dev, i: int) -> Dev:
        if i >= len(d.children):
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        return d.children[i]
