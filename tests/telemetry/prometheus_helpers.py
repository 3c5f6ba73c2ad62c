"""A real Prometheus backfilled with dcgm-exporter series, and tiny fake servers, for the
Prometheus import tests.

The data uses the label sets of real dcgm-exporter versions (see
``../shared/fixtures/dcgm/datadog-integrations-core-metrics.txt``): an old exporter with
``Hostname``/``UUID``/``modelName`` and driver labels; a newer one with lower-case
``hostname`` and the Kubernetes ``pod``/``namespace``/``container`` labels (empty once the pod
is gone); MIG instances with ``GPU_I_PROFILE``/``GPU_I_ID`` and only ``GR_ENGINE_ACTIVE``; an
HPC job mapping (``hpc_job``). Scrapes are every 30 s at 7 s past the 30 s grid, so each step
of a 30 s import holds exactly one scrape: the value imported at ``t`` is the scrape at ``t-23``.
"""

from __future__ import annotations

import http.server
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SCRAPE_S = 30
OFFSET_S = 7
POINTS = 240  # two hours of scrapes

OLD_UUID = "GPU-20c56d28-0da5-6d26-a36a-e7af1ce2586e"
NEW0_UUID = "GPU-9ef1b6d0-3643-5dd7-b823-c0ec20dcf2d5"
NEW1_UUID = "GPU-5b1d0b3c-77a0-4a8e-9d1f-1c2b3a4d5e6f"
MIG_PARENT = "GPU-a3f9c1e2-1111-2222-3333-444455556666"
HPC_UUID = "GPU-0c0ffee0-aaaa-bbbb-cccc-ddddeeeeffff"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Gpu:
    """One GPU (or MIG instance) in the generated data; values per scrape index k."""

    uuid: str  # the UUID label
    labels: dict[str, str]
    fields: dict[str, Callable[[int], float]]
    holder: Callable[[int], dict[str, str]] = lambda k: {}
    gi: str = ""

    @property
    def key(self) -> str:  # what flopwatch calls it
        return f"{self.uuid}/gi{self.gi}" if self.gi else self.uuid


METRIC_OF = {
    "util_pct": "DCGM_FI_DEV_GPU_UTIL",
    "sm_active": "DCGM_FI_PROF_SM_ACTIVE",
    "gr_engine_active": "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
    "mem_used_mib": "DCGM_FI_DEV_FB_USED",
    "fb_free": "DCGM_FI_DEV_FB_FREE",
    "power_w": "DCGM_FI_DEV_POWER_USAGE",
    "temp_c": "DCGM_FI_DEV_GPU_TEMP",
}


def fleet() -> list[Gpu]:
    old_labels = {
        "gpu": "0",
        "UUID": OLD_UUID,
        "device": "nvidia0",
        "modelName": "Tesla T4",
        "Hostname": "old-node-1",
        "DCGM_FI_DRIVER_VERSION": "460.106.00",
        "DCGM_FI_PROCESS_NAME": "/usr/bin/dcgm-exporter",
    }

    def new_labels(index: int, uuid: str) -> dict[str, str]:
        return {
            "gpu": str(index),
            "UUID": uuid,
            "device": f"nvidia{index}",
            "modelName": "NVIDIA H100 80GB HBM3",
            "hostname": "new-node-1",
            "DCGM_FI_DRIVER_VERSION": "550.144.03",
        }

    def pod(name: str, namespace: str) -> dict[str, str]:
        return {"pod": name, "namespace": namespace, "container": "main"}

    no_pod = {"pod": "", "namespace": "", "container": ""}
    mig_labels = {
        "gpu": "0",
        "UUID": MIG_PARENT,
        "device": "nvidia0",
        "modelName": "NVIDIA A100-SXM4-80GB",
        "Hostname": "mig-node-1",
    }
    return [
        # Old exporter, no pod labels at all, no profiling metrics: activity from GPU_UTIL.
        Gpu(
            OLD_UUID,
            old_labels,
            {
                "util_pct": lambda k: float((k * 37) % 101),
                "mem_used_mib": lambda k: 0.0 if k % 3 else 2048.0,
                "fb_free": lambda k: 15109.0 if k % 3 else 13061.0,
                "power_w": lambda k: 8.969 + k % 5,
                "temp_c": lambda k: 25.0 + k % 7,
            },
        ),
        # New exporter: a pod for the first hour, then empty pod labels (nobody holds it).
        Gpu(
            NEW0_UUID,
            new_labels(0, NEW0_UUID),
            {
                "util_pct": lambda k: 100.0 if k % 4 else 0.0,
                "sm_active": lambda k: round(((k * 13) % 100) / 100, 2),
                "mem_used_mib": lambda k: 40960.0,
                "fb_free": lambda k: 40599.0,
                "power_w": lambda k: 300.0 + k,
                "temp_c": lambda k: 60.0,
            },
            holder=lambda k: pod("train-abc", "ray-llm") if k < 120 else no_pod,
        ),
        # New exporter: one pod the whole two hours, mostly idle while holding memory.
        Gpu(
            NEW1_UUID,
            new_labels(1, NEW1_UUID),
            {
                "util_pct": lambda k: 0.0 if k % 10 else 50.0,
                "sm_active": lambda k: 0.0 if k % 10 else 0.5,
                "mem_used_mib": lambda k: 20000.0,
                "fb_free": lambda k: 61559.0,
                "power_w": lambda k: 90.0,
                "temp_c": lambda k: 40.0,
            },
            holder=lambda k: pod("infer-1", "serving"),
        ),
        # MIG: two instances, GR_ENGINE_ACTIVE only (no GPU_UTIL on MIG).
        Gpu(
            MIG_PARENT,
            {**mig_labels, "GPU_I_PROFILE": "3g.40gb", "GPU_I_ID": "1"},
            {
                "gr_engine_active": lambda k: round((k % 10) / 10, 1),
                "mem_used_mib": lambda k: 10000.0,
                "fb_free": lambda k: 30000.0,
            },
            holder=lambda k: pod("mig-job", "vision"),
            gi="1",
        ),
        Gpu(
            MIG_PARENT,
            {**mig_labels, "GPU_I_PROFILE": "1g.10gb", "GPU_I_ID": "2"},
            {
                "gr_engine_active": lambda k: 0.0,
                "mem_used_mib": lambda k: 0.0,
                "fb_free": lambda k: 9728.0,
            },
            holder=lambda k: no_pod,
            gi="2",
        ),
        # HPC job mapping (Slurm) with an accounting label naming the project.
        Gpu(
            HPC_UUID,
            {
                "gpu": "0",
                "UUID": HPC_UUID,
                "modelName": "NVIDIA L40S",
                "Hostname": "slurm-node-1",
                "hpc_job": "4242",
                "account": "physics",
            },
            {"util_pct": lambda k: 75.0, "mem_used_mib": lambda k: 1000.0},
        ),
    ]


def openmetrics(*, t0: int, gpus: list[Gpu]) -> str:
    """The fleet's scrapes from ``t0`` as OpenMetrics text, timestamps in seconds."""
    lines: list[str] = []
    for field_name, metric in METRIC_OF.items():
        lines.append(f"# TYPE {metric} gauge")
        for gpu in gpus:
            fn = gpu.fields.get(field_name)
            if fn is None:
                continue
            # One series per label set: a holder change starts a new series.
            runs: dict[tuple, list[str]] = {}
            for k in range(POINTS):
                labels = {**gpu.labels, **gpu.holder(k)}
                labels = {n: v for n, v in labels.items() if v}  # empty label == no label
                key = tuple(sorted(labels.items()))
                ts = t0 + k * SCRAPE_S + OFFSET_S
                runs.setdefault(key, []).append(f"{fn(k)!r} {ts}")
            for key, samples in runs.items():
                text = ",".join(f'{n}="{v}"' for n, v in key)
                lines += [f"{metric}{{{text}}} {s}" for s in samples]
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def imported_ts(t0: int, k: int) -> int:
    """The step-aligned time the scrape k is imported at (the end of its 30 s step)."""
    return t0 + (k + 1) * SCRAPE_S


@dataclass
class PrometheusServer:
    url: str
    process: subprocess.Popen
    log_path: Path
    t0: int
    gpus: list[Gpu] = field(default_factory=list)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def prometheus_start(*, prometheus: str, promtool: str, workdir: Path, t0: int) -> PrometheusServer:
    gpus = fleet()
    source = workdir / "dcgm.om"
    source.write_text(openmetrics(t0=t0, gpus=gpus))
    data = workdir / "data"
    subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(source), str(data)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    config = workdir / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 30s\n")
    port = free_port()
    log_path = workdir / "prometheus.log"
    process = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={data}",
            "--storage.tsdb.retention.time=10y",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    server = PrometheusServer(f"http://127.0.0.1:{port}", process, log_path, t0, gpus)
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as resp:
                if resp.status == 200:
                    return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"prometheus never became ready:\n{log_path.read_text()}")
        time.sleep(0.2)


# --- Fake servers -----------------------------------------------------------------------------


class FakeServer:
    """A local HTTP server answering every GET with ``handler(path) -> (status, body)``.

    ``handler`` may sleep (a slow server). Requests are counted in ``requests``.
    """

    def __init__(self, handler: Callable[[str], tuple[int, bytes]]) -> None:
        self.handler = handler
        self.requests: list[str] = []
        self.headers: list[dict[str, str]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                outer.headers.append(dict(self.headers))
                try:
                    status, body = outer.handler(self.path)
                except (BrokenPipeError, ConnectionResetError):
                    return
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def proxy_to(url: str) -> Callable[[str], tuple[int, bytes]]:
    """A handler that forwards the request to the real Prometheus."""

    def handler(path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(url + path, timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    return handler
