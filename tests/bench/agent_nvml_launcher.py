"""Run ``flopwatch-agent`` on the production path (``--source nvml``) against N fake GPUs.

The fake NVML (``tests/agents/fake_nvml.py``, fed by the real H100 ``nvidia-smi -q``
capture in ``../shared/fixtures/nvidia-smi``) is put in ``sys.modules['pynvml']`` before
``agents.cli`` runs, so the agent goes through exactly the code a real node runs: the
nvml source, Slurm attribution, payload, spool and pusher. The fake imports the real
``pynvml`` for its constants and error class, so its memory is counted as on a real node.

Unlike the unit-test fake, utilization samples here keep coming: NVML's buffer gains one
sample every :data:`SAMPLE_PERIOD_US` per GPU (at most :data:`BUFFER` kept), so each tick
averages about 60 fresh samples per GPU like the real library. Every busy GPU's process is
this process, so Slurm attribution reads a real ``/proc/<pid>/environ`` (the bench sets
``SLURM_JOB_ID``).

    python tests/bench/agent_nvml_launcher.py --gpus 8 -- --server URL --interval 10 ...
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]
CAPTURE = (
    ROOT.parent / "shared/fixtures/nvidia-smi/linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01.txt"
)
SAMPLE_PERIOD_US = 166_667  # about 6 utilization samples/s (a real H200 gave 5/s, 2026-12-04)
BUFFER = 120  # NVML keeps a bounded ring of samples


def build_fake(*, gpus: int) -> object:
    """A pynvml stand-in with ``gpus`` H100s: three in four busy (capture 'load'), the rest idle."""
    sys.path.insert(0, str(ROOT / "tests" / "agents"))
    from fake_nvml import NVML_ERROR_NOT_FOUND, Dev, FakeNvml, NVMLError, parse_capture

    text = CAPTURE.read_text()
    devs = []
    for i in range(gpus):
        d = parse_capture(text, "load" if i % 4 != 3 else "idle")
        d.uuid = f"GPU-bench0000-0000-0000-0000-{i:012d}"
        if d.procs:
            d.procs = [(os.getpid(), m) for _pid, m in d.procs[:1]]
        devs.append(d)

    class LiveFakeNvml(FakeNvml):
        def nvmlDeviceGetSamples(
            self, d: Dev, kind: int, last: int
        ) -> tuple[int, list[SimpleNamespace]]:
            if d.util is None:
                return super().nvmlDeviceGetSamples(d, kind, last)
            now = int(time.time() * 1e6) // SAMPLE_PERIOD_US
            first = max(now - BUFFER + 1, last // SAMPLE_PERIOD_US + 1)
            if first > now:
                raise NVMLError(NVML_ERROR_NOT_FOUND)
            return 1, [
                SimpleNamespace(
                    timeStamp=k * SAMPLE_PERIOD_US,
                    sampleValue=SimpleNamespace(uiVal=max(0, d.util - (k % 7) * 3)),
                )
                for k in range(first, now + 1)
            ]

    return LiveFakeNvml(devs)


def main() -> int:
    argv = sys.argv[1:]
    gpus = 8
    if argv[:1] == ["--gpus"]:
        gpus, argv = int(argv[1]), argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    sys.modules["pynvml"] = build_fake(gpus=gpus)  # type: ignore[assignment]
    sys.path.insert(0, str(ROOT))
    from agents.cli import main as agent_main

    return agent_main(["--source", "nvml", *argv])


if __name__ == "__main__":
    raise SystemExit(main())
