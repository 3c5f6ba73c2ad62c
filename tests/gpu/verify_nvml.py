"""Compare the agent's NVML source with nvidia-smi on a machine with a real NVIDIA GPU.

    python3 tests/gpu/verify_nvml.py [--interval 10] [--no-load] [--out DIR]

Not part of the test suite (CI has no GPU). For each phase (idle, a steady full load, a 50 %
duty-cycle load; the loads need PyTorch) it reads every GPU with ``agents.sources.nvml`` over
one interval while polling ``nvidia-smi --query-gpu`` once a second for the same fields, then
checks each field against nvidia-smi with a stated tolerance and prints a verdict table.
A last phase ends a job mid-interval: the read after it must keep the busy part, unzeroed
by the no-context rule, and the next read must be idle.

nvidia-smi's utilization is NVML's most recent sample, the agent's is the mean of every NVML
utilization sample of the interval; the agent is therefore compared with the *mean of the
1 s nvidia-smi polls*, which agree under steady load and within a band under a duty cycle.
Power is compared the same way, and the energy counter's delta over the interval with that
mean power times the interval. Finally it runs ``python3 -m agents --source nvml --once
--dry-run`` and checks that the batch it prints passes the server's own ingest check when a
Django environment is present (else only that it is JSON with one series per GPU).

With ``--out DIR`` it also writes ``verify_nvml.json`` (every comparison), ``payload.json``
(the dry-run batch) and ``nvidia-smi-q.txt`` there. Exit status 1 if any check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


FOOTPRINT = textwrap.dedent(
    """
    import json, sys, time
    def rss():
        f = dict(ln.split(":", 1) for ln in open("/proc/self/status") if ":" in ln)
        return round(int(f["VmRSS"].split()[0]) / 1024, 1)
    steps = [("python", rss())]
    import pynvml
    steps.append(("+ import pynvml", rss()))
    pynvml.nvmlInit()
    steps.append(("+ nvmlInit", rss()))
    sys.path.insert(0, sys.argv[1])
    from agents.sources.nvml import NvmlSource
    NvmlSource().read(now=time.time())
    steps.append(("+ NvmlSource and one read", rss()))
    print(json.dumps(steps))
    """
)


@dataclass
class Check:
    phase: str
    gpu: str
    field: str
    agent: Any
    smi: Any
    ok: bool
    rule: str


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


def smi_apps() -> dict[str, set[int]]:
    out = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=gpu_uuid,pid", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
    ).stdout
    apps: dict[str, set[int]] = {}
    for row in csv.reader(io.StringIO(out)):
        if len(row) == 2 and row[1].strip().isdigit():
            apps.setdefault(row[0].strip(), set()).add(int(row[1]))
    return apps


def num(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:  # "[N/A]", "[Not Supported]"
        return None


def mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


def within(value: float | None, ref: float | None, *, absolute: float, share: float) -> bool:
    """``value`` within ``absolute`` or ``share`` of ``ref``, whichever is wider."""
    return value is not None and ref is not None and abs(value - ref) <= max(absolute, share * ref)


@contextlib.contextmanager
def loaded(duty: float) -> Iterator[None]:
    """A PyTorch matrix-product load at ``duty`` for the block, warmed up (CUDA context,
    clocks ramping) before it starts."""
    load = subprocess.Popen([sys.executable, "-c", LOAD, str(duty)])
    try:
        time.sleep(8)
        yield
    finally:
        load.kill()
        load.wait()


class CountingNvml:
    """The real pynvml, with the utilization samples each read consumed counted per handle."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.fresh: list[int] = []
        self.period_us: list[int] = []
        self.newest_us: int | None = None
        self.asked_at = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def nvmlDeviceGetSamples(self, handle: Any, kind: int, last: int) -> Any:
        vtype, samples = self._real.nvmlDeviceGetSamples(handle, kind, last)
        self.newest_us = max((s.timeStamp for s in samples), default=None)
        self.asked_at = time.time()
        stamps = sorted(s.timeStamp for s in samples if s.timeStamp > last)
        self.fresh.append(len(stamps))
        if len(stamps) > 1:
            self.period_us.append((stamps[-1] - stamps[0]) // (len(stamps) - 1))
        return vtype, samples


def phase(source: NvmlSource, nvml: CountingNvml, *, label: str, interval: float) -> list[Check]:
    # This read primes the utilization-sample watermark and the energy counter's start.
    start_energy = {r.gpu: r.values["energy_mj"] for r in source.read(now=time.time())[1]}
    started = time.monotonic()
    nvml.fresh.clear()
    nvml.period_us.clear()
    polls: list[dict[str, dict[str, str]]] = []
    while time.monotonic() - started < interval:
        polls.append(smi())
        time.sleep(1)
    gpus, readings = source.read(now=time.time())
    elapsed = time.monotonic() - started
    final = smi()
    apps = smi_apps()
    checks: list[Check] = []
    infos = {g.uuid: g for g in gpus}  # under MIG a parent has no reading of its own
    for reading in readings:
        info, v, uuid = infos[reading.gpu], reading.values, reading.gpu
        s = final.get(uuid, {})

        def add(field: str, agent: Any, ref: Any, ok: bool, rule: str, uuid: str = uuid) -> None:
            checks.append(Check(label, uuid, field, agent, ref, bool(ok), rule))

        def series(key: str, uuid: str = uuid) -> list[float]:
            return [x for p in polls if (x := num(p.get(uuid, {}).get(key))) is not None]

        total = num(s.get("memory.total"))
        add("model", info.model, s.get("name"), info.model == s.get("name"), "equal")
        add(
            "mem_total_mib",
            info.mem_total_mib,
            total,
            total is not None and abs(info.mem_total_mib - total) <= 0.01 * total,
            "within 1 %",
        )
        used = num(s.get("memory.used"))
        add(
            "mem_used_mib",
            v["mem_used_mib"],
            used,
            used is not None and abs(v["mem_used_mib"] - used) <= 64,
            "within 64 MiB (nvidia-smi leaves the driver's reservation out)",
        )
        util_ref = mean(series("utilization.gpu"))
        util = v["util_pct"]
        if label == "idle":
            ok, rule = util is not None and util <= 5, "agent <= 5 %"
        elif label == "full load":
            ok = util is not None and util >= 90 and util_ref is not None and util_ref >= 90
            rule = "both >= 90 %"
        else:
            ok = util is not None and 15 <= util <= 85 and abs(util - (util_ref or 0)) <= 20
            rule = "agent 15..85 % and within 20 points of the smi mean"
        add("util_pct (vs smi 1 s-poll mean)", util, util_ref, ok, rule)
        power_ref = mean(series("power.draw"))
        add(
            "power_w (vs smi 1 s-poll mean)",
            v["power_w"],
            power_ref,
            within(v["power_w"], power_ref, absolute=25, share=0.15),
            "within 25 W or 15 %",
        )
        # The die heats and cools within a duty cycle's half second: compare with the range
        # of the polls, not with one poll taken a moment after the agent's read.
        final_temp = num(s.get("temperature.gpu"))
        temps = series("temperature.gpu") + ([final_temp] if final_temp is not None else [])
        add(
            "temp_c (vs range of smi polls)",
            v["temp_c"],
            f"{min(temps):g}..{max(temps):g}" if temps else None,
            bool(temps) and min(temps) - 3 <= v["temp_c"] <= max(temps) + 3,
            "within 3 C of the polls' range",
        )
        clock = num(s.get("clocks.sm"))
        add(
            "sm_clock_mhz",
            v["sm_clock_mhz"],
            clock,
            within(v["sm_clock_mhz"], clock, absolute=100, share=0.1),
            "within 100 MHz or 10 %",
        )
        e0, e1 = start_energy.get(uuid), v["energy_mj"]
        if e0 is not None and e1 is not None and power_ref:
            watts = (e1 - e0) / 1000 / elapsed
            add(
                "energy counter delta / s (W)",
                round(watts, 1),
                power_ref,
                within(watts, power_ref, absolute=25, share=0.15),
                "within 25 W or 15 % of the mean power",
            )
        else:
            add("energy counter delta / s (W)", e1, power_ref, False, "counter readable")
        pids = {p["pid"] for p in info.processes or []}
        add(
            "compute processes (pids)",
            sorted(pids),
            sorted(apps.get(uuid, set())),
            info.processes is not None and pids == apps.get(uuid, set()),
            "same pid set",
        )
        add("xid", v["xid"], 0, v["xid"] == 0, "0: events registered, none seen")
    per_read = nvml.fresh[-len(readings) :] if nvml.fresh else []
    checks.append(
        Check(
            label,
            "all",
            f"NVML utilization samples in {elapsed:.1f} s",
            per_read,
            f"period {nvml.period_us[-1] if nvml.period_us else None} us",
            all(n > 0 for n in per_read),
            "> 0 fresh samples per GPU (the interval mean is a real mean)",
        )
    )
    newest = nvml.newest_us
    checks.append(
        Check(
            label,
            "all",
            "newest NVML sample timestamp - time.time() (s)",
            None if newest is None else round(newest / 1e6 - nvml.asked_at, 2),
            None,
            newest is not None and abs(newest / 1e6 - nvml.asked_at) < 5,
            "within 5 s: timestamps are epoch microseconds",
        )
    )
    return checks


def job_end(source: NvmlSource) -> list[Check]:
    """A job that exits mid-interval: the read after it keeps the busy part (no context now,
    but there was one for most of the interval); the read after that is idle."""
    with loaded(1.0):
        source.read(now=time.time())
        time.sleep(5)
    checks = []
    for wait, when, rule, test, zeroed_ok in (
        (2.5, "read after the job exited", "20..95 %, no util_no_context", (20, 95), False),
        (5.0, "read one interval later", "<= 5 %", (0, 5), True),
    ):
        time.sleep(wait)
        gpus, readings = source.read(now=time.time())
        notes = {g.uuid: g.notes for g in gpus}
        for r in readings:
            util = r.values["util_pct"]
            ok = util is not None and test[0] <= util <= test[1]
            ok = ok and (zeroed_ok or "util_no_context" not in notes[r.gpu])
            checks.append(Check("job end", r.gpu, f"util_pct, {when}", util, None, ok, rule))
    return checks


def buffer_span(nvml: Any) -> list[Check]:
    """How far back NVML's utilization buffer reaches: what a first read with 0 would average."""
    checks = []
    for i in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(i)
        try:
            _vtype, samples = nvml.nvmlDeviceGetSamples(
                handle, nvml.NVML_GPU_UTILIZATION_SAMPLES, 0
            )
        except nvml.NVMLError as exc:
            checks.append(Check("buffer", str(i), "NVML buffer", str(exc), None, True, "info"))
            continue
        stamps = sorted(s.timeStamp for s in samples)
        span = (stamps[-1] - stamps[0]) / 1e6 if stamps else 0
        checks.append(
            Check(
                "buffer", str(i), "NVML buffer: samples, span (s)", len(stamps), span, True, "info"
            )
        )
    return checks


def footprint() -> list[Check]:
    out = subprocess.run(
        [sys.executable, "-c", FOOTPRINT, str(ROOT)], capture_output=True, text=True
    )
    try:
        steps = json.loads(out.stdout)
    except json.JSONDecodeError:
        return [Check("footprint", "all", "RSS steps", out.stderr[-300:], None, False, "ran")]
    return [Check("footprint", "all", f"RSS {k}", v, "MiB", True, "info") for k, v in steps]


def dry_run(out: Path | None) -> list[Check]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOPWATCH_")}
    env["FLOPWATCH_NODE"] = "gpu-check"
    cli = subprocess.run(
        [sys.executable, "-m", "agents", "--source", "nvml", "--once", "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    print(f"\n--- flopwatch-agent --source nvml --once --dry-run: exit {cli.returncode}")
    print(cli.stderr[-2000:])
    try:
        payload = json.loads(cli.stdout)
    except json.JSONDecodeError as exc:
        return [Check("dry-run", "all", "batch is JSON", cli.stdout[:200], None, False, str(exc))]
    if out is not None:
        (out / "payload.json").write_text(json.dumps(payload, indent=1))
    print(json.dumps(payload, indent=1)[:3000])
    sent, present = len(payload.get("gpus", [])), len(smi())
    checks = [
        Check("dry-run", "all", "agent exit status", cli.returncode, 0, cli.returncode == 0, "0"),
        Check(
            "dry-run",
            "all",
            "GPUs in the batch",
            sent,
            present,
            sent == present,
            "one per nvidia-smi GPU",
        ),
    ]
    try:
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "apps.settings")
        import django

        django.setup()
        from django.conf import settings

        from apps.telemetry.ingest import IngestError, batch_check
    except ImportError:
        return checks  # no server environment on this machine: the shape checks above stand
    try:
        # The server's own limits, as gpu_samples_ingest applies them.
        batch_check(
            batch=payload,
            now_ts=int(time.time()),
            live=True,
            max_samples=settings.FLOPWATCH_INGEST_MAX_SAMPLES,
            max_past_s=settings.FLOPWATCH_INGEST_MAX_PAST_S,
            max_future_s=settings.FLOPWATCH_INGEST_MAX_FUTURE_S,
        )
    except IngestError as exc:
        verdict, ok = str(exc), False
    else:
        verdict, ok = "passed", True
    checks.append(Check("dry-run", "all", "server ingest check", verdict, None, ok, "no error"))
    return checks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--no-load", action="store_true", help="only the idle phase")
    ap.add_argument("--out", type=Path, help="folder for verify_nvml.json, payload.json, ...")
    args = ap.parse_args()
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        smi_q = subprocess.run(["nvidia-smi", "-q"], capture_output=True, text=True).stdout
        (args.out / "nvidia-smi-q.txt").write_text(smi_q)
    print(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout)
    import pynvml

    nvml = CountingNvml(pynvml)
    source = NvmlSource(nvml=nvml)
    driver = source._s(source._try(pynvml.nvmlSystemGetDriverVersion))
    print(f"driver {driver}, NVML {source._s(source._try(pynvml.nvmlSystemGetNVMLVersion))}")
    checks = buffer_span(pynvml) + footprint()
    checks += phase(source, nvml, label="idle", interval=args.interval)
    if not args.no_load:
        for duty, label in ((1.0, "full load"), (0.5, "50% duty cycle")):
            with loaded(duty):
                checks += phase(source, nvml, label=label, interval=args.interval)
        checks += job_end(source)
    source.close()
    checks += dry_run(args.out)
    width = max(len(c.field) for c in checks)
    for c in checks:
        mark = "ok  " if c.ok else "FAIL"
        print(
            f"{mark} {c.phase:<15} {c.field:<{width}} agent={c.agent!s:<12} smi={c.smi!s:<10} {c.rule}"
        )
    failed = [c for c in checks if not c.ok]
    print(f"\n{len(checks) - len(failed)} of {len(checks)} checks passed")
    if args.out is not None:
        (args.out / "verify_nvml.json").write_text(
            json.dumps([c.__dict__ for c in checks], indent=1, default=str)
        )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
