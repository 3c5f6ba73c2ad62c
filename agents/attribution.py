"""Attribution: which job (and project, user) holds each GPU.

An :class:`Attributor` maps GPU UUIDs to an ``alloc`` dict (``{"job", "project", "user"}``)
or leaves them out (nobody holds the GPU). Several are chained; the first answer wins.
Built in: a static map file, Slurm (from the environment of the processes on the GPU), and
Kubernetes (pod labels that dcgm-exporter attaches). Add your own by implementing
``attribute(gpus=...)`` and registering it in :data:`REGISTRY`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from agents.sources import Alloc, GpuInfo

log = logging.getLogger(__name__)


class Attributor(Protocol):
    def attribute(self, *, gpus: list[GpuInfo]) -> dict[str, Alloc]: ...


class StaticMap:
    """A file mapping GPU UUID (or ``*`` for all GPUs of the node) to an allocation.

    JSON or TOML, e.g. ``{"GPU-…": {"name": "reserved-a", "project": "p", "user": "u"}}``.
    ``job`` defaults to ``static:<name>`` (or ``static:<uuid>``). Re-read when it changes.
    """

    def __init__(self, *, path: str | Path) -> None:
        self.path = Path(path)
        self._mtime: float | None = None
        self._map: dict[str, Alloc] = {}

    def _load(self) -> None:
        mtime = self.path.stat().st_mtime
        if mtime == self._mtime:
            return
        text = self.path.read_text()
        raw: dict[str, Any] = (
            tomllib.loads(text) if self.path.suffix == ".toml" else json.loads(text)
        )
        parsed: dict[str, Alloc] = {}
        for key, val in raw.items():
            name = val.get("name") or key
            job = val.get("job") or f"static:{name}"
            parsed[key] = {"job": job, "project": val.get("project"), "user": val.get("user")}
        self._map, self._mtime = parsed, mtime

    def attribute(self, *, gpus: list[GpuInfo]) -> dict[str, Alloc]:
        self._load()
        default = self._map.get("*")
        out: dict[str, Alloc] = {}
        for g in gpus:
            alloc = self._map.get(g.uuid) or default
            if alloc:
                out[g.uuid] = dict(alloc)
        return out


def _read_environ(proc_root: Path, pid: int) -> dict[str, str]:
    data = (proc_root / str(pid) / "environ").read_bytes()
    env: dict[str, str] = {}
    for item in data.split(b"\0"):
        key, sep, val = item.partition(b"=")
        if sep and key.startswith(b"SLURM_"):
            env[key.decode()] = val.decode("utf-8", "replace")
    return env


def _job_from_cgroup(proc_root: Path, pid: int) -> str | None:
    # cgroup v1/v2 paths contain ".../job_123456/..." under Slurm's cgroup plugin.
    text = (proc_root / str(pid) / "cgroup").read_text()
    for part in text.replace(":", "/").split("/"):
        if part.startswith("job_") and part[4:].isdigit():
            return part[4:]
    return None


class Slurm:
    """Job of the processes running on each GPU, from ``/proc/<pid>/environ`` or cgroup.

    Needs the agent to run as root (or with CAP_SYS_PTRACE) to read other users' environ;
    the cgroup path is world-readable and gives at least the job id.
    """

    def __init__(self, *, proc_root: str | Path = "/proc") -> None:
        self.proc_root = Path(proc_root)

    def attribute(self, *, gpus: list[GpuInfo]) -> dict[str, Alloc]:
        out: dict[str, Alloc] = {}
        for g in gpus:
            for proc in g.processes or []:
                pid = int(proc["pid"])
                env: dict[str, str] = {}
                with contextlib.suppress(OSError):
                    env = _read_environ(self.proc_root, pid)
                job_id = env.get("SLURM_JOB_ID")
                if not job_id:
                    try:
                        job_id = _job_from_cgroup(self.proc_root, pid)
                    except OSError:
                        job_id = None
                if job_id:
                    out[g.uuid] = {
                        "job": f"slurm:{job_id}",
                        "project": env.get("SLURM_JOB_ACCOUNT"),
                        "user": env.get("SLURM_JOB_USER"),
                    }
                    break
        return out


class Kubernetes:
    """Pod and namespace labels that dcgm-exporter attaches to each GPU's series.

    ``project`` comes from a namespace-to-project mapping label if present, else the
    namespace. Empty pod labels (a GPU no pod holds) mean no allocation.
    """

    def __init__(self, *, project_label: str = "flopwatch_project") -> None:
        self.project_label = project_label

    def attribute(self, *, gpus: list[GpuInfo]) -> dict[str, Alloc]:
        out: dict[str, Alloc] = {}
        for g in gpus:
            pod = g.labels.get("pod") or ""
            ns = g.labels.get("namespace") or ""
            if pod:
                out[g.uuid] = {
                    "job": f"k8s:{ns}/{pod}" if ns else f"k8s:{pod}",
                    "project": g.labels.get(self.project_label) or ns or None,
                    "user": None,
                }
        return out


class Chain:
    """First attributor that knows a GPU wins; one failing attributor does not stop others."""

    def __init__(self, attributors: list[Attributor]) -> None:
        self.attributors = attributors

    def attribute(self, *, gpus: list[GpuInfo]) -> dict[str, Alloc]:
        out: dict[str, Alloc] = {}
        for a in self.attributors:
            try:
                got = a.attribute(gpus=gpus)
            except Exception as exc:
                log.warning("attributor %s failed: %s", type(a).__name__, exc)
                continue
            for k, v in got.items():
                out.setdefault(k, v)
        return out


REGISTRY: dict[str, Callable[..., Attributor]] = {
    "static": StaticMap,
    "slurm": Slurm,
    "k8s": Kubernetes,
}
