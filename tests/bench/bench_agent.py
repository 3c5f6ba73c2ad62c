"""Agent overhead benchmark (``make bench``): CPU time and peak RSS of a real agent process.

Runs ``flopwatch-agent --source sim`` (8 simulated GPUs, 10 s interval) against a local
HTTP sink for ``--duration`` seconds (default 600 = 10 minutes) and prints CPU time, CPU
share of one core and peak RSS (VmHWM). Targets: <= 0.5 % of one core, <= 40 MiB.

    python tests/bench/bench_agent.py [--duration 600] [--interval 10]
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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _sink() -> tuple[ThreadingHTTPServer, list[int]]:
    got: list[int] = []

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

        def do_POST(self) -> None:
            p = json.loads(gzip.decompress(self.rfile.read(int(self.headers["Content-Length"]))))
            got.append(sum(len(s["ts"]) for s in p["series"]))
            self.send_response(202)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, got


def _proc(pid: int) -> tuple[float, int]:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    hwm = next(
        ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("VmHWM")
    )
    return cpu, int(hwm.split()[1]) * 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=float, default=600)
    ap.add_argument("--interval", type=float, default=10)
    args = ap.parse_args()
    srv, got = _sink()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PYTHONPATH=str(ROOT), FLOPWATCH_TOKEN="bench")
        cmd = [
            sys.executable,
            "-m",
            "agents",
            "--server",
            f"http://127.0.0.1:{srv.server_address[1]}",
            "--source",
            "sim",
            "--node",
            "bench-node",
            "--sim-gpus",
            "8",
            "--interval",
            str(args.interval),
            "--spool",
            f"{tmp}/spool.sqlite",
            "--log-level",
            "WARNING",
        ]
        p = subprocess.Popen(cmd, cwd=ROOT, env=env)
        time.sleep(2)
        cpu0, _ = _proc(p.pid)  # start-up (imports) reported separately from steady state
        t0 = time.monotonic()
        time.sleep(args.duration)
        cpu1, hwm = _proc(p.pid)
        wall = time.monotonic() - t0
        p.terminate()
        p.wait(10)
    srv.shutdown()
    steady = cpu1 - cpu0
    print(f"duration            {wall:.0f} s at {args.interval:g} s interval, 8 simulated GPUs")
    print(f"batches delivered   {len(got)} ({sum(got)} samples)")
    print(f"start-up CPU        {cpu0:.2f} s")
    print(
        f"steady CPU          {steady:.2f} s = {100 * steady / wall:.3f} % of one core (target <= 0.5 %)"
    )
    print(
        f"total CPU           {cpu1:.2f} s = {100 * cpu1 / (wall + 2):.3f} % of one core incl. start-up"
    )
    print(f"peak RSS (VmHWM)    {hwm / 2**20:.1f} MiB (target <= 40 MiB)")
    ok = 100 * steady / wall <= 0.5 and hwm <= 40 * 2**20
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
