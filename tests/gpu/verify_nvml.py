"""Compare the agent's NVML source with nvidia-smi on a machine with a real NVIDIA GPU.

    python3 tests/gpu/verify_nvml.py [--interval 10] [--no-load]

Not part of the test suite (CI has no GPU). For each phase (idle, a steady full load, a 50 %
duty-cycle load; the loads need PyTorch) it reads every GPU with ``agents.sources.nvml`` over
one interval and, at the same moment, asks ``nvidia-smi --query-gpu`` for the same fields,
then prints both side by side. nvidia-smi's utilization is NVML's most recent ~1/6 s to 1 s
sample, the agent's is the mean of every NVML utilization sample of the interval, so the two
agree under steady load and differ (by design) under a duty-cycle load, where only the
interval mean is the honest figure. Finally it runs ``python3 -m agents --source nvml --once
--dry-run`` and checks that the batch it prints is a valid payload for this node.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from agents.sources.nvml import NvmlSource  # noqa: E402

SMI_FIELDS = (
    "uuid,index,name,memory.total,memory.used,utilization.gpu,power.draw,temperature.gpu,clocks.sm"
)

LOAD = textwrap.dedent(
    """
    import sys, time, torch
    duty = float(sys.argv[1])
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    period = 0.5
    while True:
        start = time.monotonic()
        while time.monotonic() - start < period * duty:
            for _ in range(4):
                a @ a
            torch.cuda.synchronize()
        time.sleep(max(0.0, period * (1 - duty)))
    """
)


def smi() -> dict[str, dict[str, str]]:
    out = subprocess.run(
        ["nvidia-smi", f"--query-gpu={SMI_FIELDS}", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = SMI_FIELDS.split(",")
    rows = {}
    for row in csv.reader(io.StringIO(out)):
        values = dict(zip(names, (cell.strip() for cell in row), strict=True))
        rows[values["uuid"]] = values
    return rows


def phase(source: NvmlSource, *, label: str, interval: float) -> list[dict]:
    source.read(now=time.time())  # primes the utilization-sample watermark
    smi_samples: list[dict[str, dict[str, str]]] = []
    deadline = time.monotonic() + interval
    while time.monotonic() < deadline:
        smi_samples.append(smi())
        time.sleep(1)
    gpus, readings = source.read(now=time.time())
    final_smi = smi()
    out = []
    for info, reading in zip(gpus, readings, strict=False):
        s = final_smi.get(info.uuid, {})
        smi_utils = [float(x[info.uuid]["utilization.gpu"]) for x in smi_samples if info.uuid in x]
        out.append(
            {
                "phase": label,
                "uuid": info.uuid,
                "model": (info.model, s.get("name")),
                "mem_total_mib": (info.mem_total_mib, s.get("memory.total")),
                "mem_used_mib": (reading.values["mem_used_mib"], s.get("memory.used")),
                "util_pct (agent interval mean, smi now / smi mean of 1 s polls)": (
                    reading.values["util_pct"],
                    s.get("utilization.gpu"),
                    round(sum(smi_utils) / len(smi_utils), 1) if smi_utils else None,
                ),
                "power_w": (reading.values["power_w"], s.get("power.draw")),
                "temp_c": (reading.values["temp_c"], s.get("temperature.gpu")),
                "sm_clock_mhz": (reading.values["sm_clock_mhz"], s.get("clocks.sm")),
                "energy_mj": reading.values["energy_mj"],
                "xid": reading.values["xid"],
                "processes": info.processes,
            }
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--no-load", action="store_true", help="only the idle phase")
    args = ap.parse_args()
    print(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout)
    source = NvmlSource()
    results = phase(source, label="idle", interval=args.interval)
    if not args.no_load:
        for duty, label in ((1.0, "full load"), (0.5, "50% duty cycle")):
            load = subprocess.Popen([sys.executable, "-c", LOAD, str(duty)])
            try:
                time.sleep(8)  # CUDA context, clocks ramp up
                results += phase(source, label=label, interval=args.interval)
            finally:
                load.kill()
                load.wait()
    source.close()
    for row in results:
        print(f"--- {row.pop('phase')} {row.pop('uuid')}")
        for key, value in row.items():
            print(f"  {key:<66} {value}")
    cli = subprocess.run(
        [sys.executable, "-m", "agents", "--source", "nvml", "--once", "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"FLOPWATCH_NODE": "gpu-check", "PATH": "/usr/bin:/bin"},
    )
    print(f"\n--- flopwatch-agent --source nvml --once --dry-run: exit {cli.returncode}")
    print(cli.stderr[-2000:])
    payload = json.loads(cli.stdout)
    print(json.dumps(payload, indent=1)[:4000])
    return cli.returncode


if __name__ == "__main__":
    raise SystemExit(main())
