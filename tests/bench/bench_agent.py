"""Agent overhead benchmark (``make bench``): CPU time and peak RSS of a real agent process.

Two agent processes run side by side for ``--duration`` seconds (default 600 = 10 minutes)
at a 10 s interval, each pushing to its own local HTTP sink through the real spool and
pusher:

* ``nvml`` (production path): ``--source nvml`` with 8 GPUs behind the pynvml API, the fake
  NVML of ``tests/agents/fake_nvml.py`` fed by the real H100 capture and injected by
  ``tests/bench/agent_nvml_launcher.py``; Slurm attribution reads a real /proc environ.
* ``sim`` (demo/test source): ``--source sim --sim-gpus 8`` (numpy-vectorised simulator).
* ``nvml-real`` (only on a machine with an NVIDIA GPU, not in the default modes): the same
  ``--source nvml`` agent on the real ``pynvml`` and driver, every GPU of the machine.

Per mode it prints start-up CPU (until the first batch is delivered), steady CPU as a share
of one core (target <= 0.5 %) and peak RSS, VmHWM (target <= 40 MiB), each with PASS/FAIL.
Exit status 0 only when every target of every mode passes.

    python tests/bench/bench_agent.py [--duration 600] [--interval 10] [--modes nvml,sim]

Measured 2026-11-29 (2-core dev VM, Python 3.11.7, numpy 2.4.6), both
modes concurrently, 600 s steady window each, 10 s interval, 8 GPUs, 61 batches delivered:

    mode  start-up (wall, CPU)  steady CPU                         peak RSS (VmHWM)
    nvml  0.3 s, 0.11 s         0.17 s = 0.028 % of a core (PASS)  26.6 MiB (PASS)
    sim   0.5 s, 0.15 s         0.24 s = 0.040 % of a core (PASS)  45.0 MiB (FAIL)

RSS at the end equalled the peak (no growth over the 10 minutes). The sim source misses
the RSS target because of numpy, ~18 MiB resident (``_multiarray_umath`` 7.3 MiB, OpenBLAS
3.7, libgfortran 1.4, plus its Python modules); the production path never
imports numpy (``tests/agents/test_agent_footprint.py``). Not counted on the nvml path:
the real ``libnvidia-ml.so`` pages (the fake stands in for the driver; ``pynvml`` itself is
loaded); counted although a real node would not run it: the fake's own per-tick work.

``--modes nvml-real`` measured 2026-12-04 on one H200 (driver 580.159.04, Python 3.12.3,
30 s window): steady CPU 0.02 s = 0.067 % of a core (PASS), peak RSS 58.6 MiB (FAIL):
``nvmlInit`` alone adds 18 MiB of driver allocations, and that image's ``pynvml`` has no
``.pyc`` (+16 MiB compiling it; 3.9 MiB with one). See agents/README.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = Path(__file__).resolve().parent / "agent_nvml_launcher.py"
GPUS = 8
CPU_TARGET_PCT = 0.5
RSS_TARGET_MIB = 40.0
MODES = ("nvml", "sim", "nvml-real")
DEFAULT_MODES = ("nvml", "sim")  # nvml-real needs a GPU


class Sink:
    """Local HTTP server that accepts every batch and counts batches and samples."""

    def __init__(self) -> None:
        self.batches = 0
        self.samples = 0
        self.first = threading.Event()
        sink = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                p = json.loads(gzip.decompress(raw))
                sink.samples += sum(len(s["ts"]) for s in p["series"])
                sink.batches += 1
                sink.first.set()
                self.send_response(202)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.srv.server_address[1]}"


def _cpu_s(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def _status_kib(pid: int) -> dict[str, int]:
    out = {}
    for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = ln.partition(":")
        if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[k] = int(v.split()[0])
    return out


@dataclass
class Run:
    """One agent process and what was measured about it."""

    mode: str
    proc: subprocess.Popen[bytes]
    sink: Sink
    t0: float = 0.0
    startup_cpu: float = 0.0
    startup_s: float = 0.0
    end: dict[str, float] = field(default_factory=dict)


def start(*, mode: str, interval: float, tmp: str) -> Run:
    sink = Sink()
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONPATH=path, FLOPWATCH_TOKEN="bench")
    common = [
        "--server",
        sink.url,
        "--node",
        f"bench-{mode}",
        "--interval",
        str(interval),
        "--spool",
        f"{tmp}/{mode}.sqlite",
        "--log-level",
        "WARNING",
    ]
    if mode == "nvml":
        # The launcher points every busy fake GPU's process at itself: Slurm attribution.
        env.update(SLURM_JOB_ID="4242", SLURM_JOB_ACCOUNT="bench", SLURM_JOB_USER="bench")
        cmd = [sys.executable, str(LAUNCHER), "--gpus", str(GPUS), "--", *common]
    elif mode == "nvml-real":
        cmd = [sys.executable, "-m", "agents", "--source", "nvml", *common]
    else:
        cmd = [sys.executable, "-m", "agents", "--source", "sim", "--sim-gpus", str(GPUS), *common]
    return Run(mode=mode, proc=subprocess.Popen(cmd, cwd=ROOT, env=env), sink=sink)


def settle(run: Run, *, started: float) -> None:
    """Start-up ends when the first batch is delivered; steady state is measured after it."""
    if not run.sink.first.wait(120) or run.proc.poll() is not None:
        raise SystemExit(f"{run.mode}: agent delivered nothing (exit {run.proc.poll()})")
    run.t0 = time.monotonic()
    run.startup_s = run.t0 - started
    run.startup_cpu = _cpu_s(run.proc.pid)


def finish(run: Run) -> None:
    run.end = dict(_status_kib(run.proc.pid), cpu=_cpu_s(run.proc.pid))
    run.end["wall"] = time.monotonic() - run.t0
    run.proc.terminate()
    run.proc.wait(10)
    run.sink.srv.shutdown()


def report(run: Run, *, interval: float) -> bool:
    steady = run.end["cpu"] - run.startup_cpu
    pct = 100 * steady / run.end["wall"]
    hwm = run.end["VmHWM"] / 1024
    cpu_ok, rss_ok = pct <= CPU_TARGET_PCT, hwm <= RSS_TARGET_MIB
    label, gpus = {
        "nvml": ("production path, fake NVML", f"{GPUS} GPUs"),
        "nvml-real": ("production path, real driver", "this machine's GPUs"),
    }.get(run.mode, ("demo/test source", f"{GPUS} GPUs"))
    print(f"--- {run.mode} ({label}), {gpus}, {interval:g} s interval")
    print(f"steady window       {run.end['wall']:.0f} s after the first batch")
    print(f"batches delivered   {run.sink.batches} ({run.sink.samples} samples)")
    print(f"start-up            {run.startup_s:.1f} s, {run.startup_cpu:.2f} s CPU")
    print(
        f"steady CPU          {steady:.2f} s = {pct:.3f} % of one core"
        f" (target <= {CPU_TARGET_PCT} %)  {'PASS' if cpu_ok else 'FAIL'}"
    )
    print(
        f"peak RSS (VmHWM)    {hwm:.1f} MiB (target <= {RSS_TARGET_MIB:g} MiB)"
        f"  {'PASS' if rss_ok else 'FAIL'}"
    )
    print(
        f"RSS at end          {run.end['VmRSS'] / 1024:.1f} MiB"
        f" (anon {run.end['RssAnon'] / 1024:.1f}, file {run.end['RssFile'] / 1024:.1f})"
    )
    return cpu_ok and rss_ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", type=float, default=600, help="steady window, seconds")
    ap.add_argument("--interval", type=float, default=10)
    ap.add_argument(
        "--modes", default=",".join(DEFAULT_MODES), help="comma-separated: nvml,sim,nvml-real"
    )
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        ap.error(f"unknown modes {sorted(unknown)}")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        runs = [start(mode=m, interval=args.interval, tmp=tmp) for m in modes]
        try:
            for r in runs:
                settle(r, started=started)
            for r in runs:  # each mode gets its own full window
                time.sleep(max(0.0, r.t0 + args.duration - time.monotonic()))
                finish(r)
        finally:
            for r in runs:
                if r.proc.poll() is None:
                    r.proc.kill()
    ok = [report(r, interval=args.interval) for r in runs]
    print("PASS" if all(ok) else "FAIL")
    return 0 if all(ok) else 1


if __name__ == "__main__":
    raise SystemExit(main())
