"""dcgm-exporter source: scrape ``/metrics`` and parse it with prometheus_client's parser.

Label drift between exporter versions is tolerated (``Hostname``/``hostname``,
``UUID``/``uuid``, ``GPU_I_ID``/``GPU_I_PROFILE`` for MIG); series are keyed on the GPU
UUID (plus MIG instance). Label-less families (dummy values) and NaN/blank sentinels are
skipped. Pod labels are kept for Kubernetes attribution.
"""

from __future__ import annotations

import math
import urllib.request
from typing import Any

from agents.sources import GpuInfo, Reading, SourceError

FIELD_MAP: dict[str, tuple[str, float]] = {
    "DCGM_FI_DEV_GPU_UTIL": ("util_pct", 1.0),
    "DCGM_FI_PROF_SM_ACTIVE": ("sm_active", 1.0),
    "DCGM_FI_PROF_SM_OCCUPANCY": ("sm_occupancy", 1.0),
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": ("tensor_active", 1.0),
    "DCGM_FI_PROF_DRAM_ACTIVE": ("dram_active", 1.0),
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": ("gr_engine_active", 1.0),
    "DCGM_FI_DEV_FB_USED": ("mem_used_mib", 1.0),
    "DCGM_FI_DEV_POWER_USAGE": ("power_w", 1.0),
    "DCGM_FI_DEV_GPU_TEMP": ("temp_c", 1.0),
    "DCGM_FI_DEV_SM_CLOCK": ("sm_clock_mhz", 1.0),
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": ("energy_mj", 1.0),
    "DCGM_FI_DEV_XID_ERRORS": ("xid", 1.0),
}
# DCGM's "blank" sentinels (DCGM_FP64_BLANK, DCGM_INT32/64_BLANK and neighbours).
_BLANKS = (140737488355328.0, 2147483632.0, 9223372036854775792.0)


class DcgmParseError(SourceError):
    """The scrape is not valid Prometheus text format."""


def _label(labels: dict[str, str], *names: str) -> str:
    for n in names:
        v = labels.get(n)
        if v:
            return v
    return ""


def _blank(v: float) -> bool:
    return math.isnan(v) or math.isinf(v) or any(v >= b for b in _BLANKS)


def parse_metrics(text: str) -> dict[str, dict[str, Any]]:
    """Parse a scrape into ``{device_key: {"labels": {...}, "values": {field: value}}}``.

    ``device_key`` is the GPU UUID, or ``UUID/gi<id>`` for a MIG instance. Raises
    :class:`DcgmParseError` with the parser's message on malformed input.
    """
    from prometheus_client.parser import text_string_to_metric_families

    devices: dict[str, dict[str, Any]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                # The parser names counter samples "<family>_total"; key on the family.
                name = family.name if s.name == family.name + "_total" else s.name
                if name not in FIELD_MAP and name not in (
                    "DCGM_FI_DEV_FB_FREE",
                    "DCGM_FI_DEV_FB_TOTAL",
                ):
                    continue
                labels = s.labels
                uuid = _label(labels, "UUID", "uuid")
                if not uuid:
                    continue  # label-less dummy families cannot be tied to a GPU
                gi = _label(labels, "GPU_I_ID", "gpu_i_id")
                key = f"{uuid}/gi{gi}" if gi else uuid
                dev = devices.setdefault(key, {"labels": {}, "values": {}, "extra": {}})
                if not dev["labels"]:
                    dev["labels"] = dict(labels)
                v = float(s.value)
                if _blank(v):
                    continue
                if name in FIELD_MAP:
                    field, scale = FIELD_MAP[name]
                    dev["values"][field] = v * scale
                else:
                    dev["extra"][name] = v
    except ValueError as exc:
        raise DcgmParseError(f"invalid Prometheus text format: {exc}") from exc
    for dev in devices.values():
        vals, extra = dev["values"], dev["extra"]
        if "xid" in vals:
            vals["xid"] = int(vals["xid"])
        for f in ("temp_c", "sm_clock_mhz", "mem_used_mib"):
            if f in vals:
                vals[f] = int(vals[f])
        total = extra.get("DCGM_FI_DEV_FB_TOTAL")
        if total is None and "mem_used_mib" in vals and "DCGM_FI_DEV_FB_FREE" in extra:
            total = vals["mem_used_mib"] + extra["DCGM_FI_DEV_FB_FREE"]
        dev["mem_total_mib"] = int(total) if total is not None else None
    return devices


class DcgmSource:
    """Scrapes a local dcgm-exporter each tick."""

    name = "dcgm"

    def __init__(
        self,
        *,
        url: str = "http://127.0.0.1:9400/metrics",
        timeout_s: float = 5.0,
        fetch: Any = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"dcgm url must be http(s): {url!r}")
        self.url = url
        self.timeout_s = timeout_s
        self._fetch = fetch or self._http_get

    def _http_get(self) -> str:
        with urllib.request.urlopen(self.url, timeout=self.timeout_s) as resp:  # noqa: S310 (checked above)
            return resp.read().decode("utf-8", "replace")

    def read(self, *, now: float) -> tuple[list[GpuInfo], list[Reading]]:
        try:
            text = self._fetch()
        except OSError as exc:
            raise SourceError(f"cannot scrape {self.url}: {exc}") from exc
        devices = parse_metrics(text)
        gpus: list[GpuInfo] = []
        readings: list[Reading] = []
        for key, dev in sorted(devices.items()):
            lab = dev["labels"]
            uuid = _label(lab, "UUID", "uuid")
            gi = _label(lab, "GPU_I_ID", "gpu_i_id")
            dev_uuid = key if not gi else f"{uuid}/gi{gi}"
            try:
                index = int(_label(lab, "gpu") or 0)
            except ValueError:
                index = 0
            gpus.append(
                GpuInfo(
                    uuid=dev_uuid,
                    index=index,
                    model=_label(lab, "modelName", "model_name", "DCGM_FI_DEV_NAME") or None,
                    mem_total_mib=dev["mem_total_mib"],
                    mig_parent=uuid if gi else None,
                    mig_profile=_label(lab, "GPU_I_PROFILE", "gpu_i_profile") or None,
                    labels={
                        k: lab.get(k, "")
                        for k in ("pod", "namespace", "container", "Hostname", "hostname")
                    },
                )
            )
            if dev["values"]:  # a GPU with only metadata families has nothing to sample
                readings.append(Reading(gpu=dev_uuid, ts=now, values=dict(dev["values"])))
        return gpus, readings

    def close(self) -> None:
        pass
