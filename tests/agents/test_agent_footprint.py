"""Footprint: the production sources (nvml, dcgm, replay) never import heavy modules.

Each case runs a real ``agents.cli.main(... --once --dry-run)`` in a fresh interpreter and
then inspects ``sys.modules``: numpy alone is ~20 MiB of RSS, half the agent's budget
(issue 3: <= 40 MiB), and only the simulator needs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("numpy", "pandas", "scipy", "django")

_CHILD = """
import json, sys
sys.path[:0] = [{root!r}, {tests!r}]
if {capture!r}:
    from fake_nvml import FakeNvml, parse_capture
    text = open({capture!r}).read()
    sys.modules["pynvml"] = FakeNvml([parse_capture(text, "load"), parse_capture(text, "idle")])
from agents.cli import main
rc = main({argv!r})
print(json.dumps({{"rc": rc, "modules": sorted(sys.modules)}}), file=sys.stderr)
"""


def _run_agent(argv: list[str], *, capture: str = "") -> dict:
    code = _CHILD.format(
        root=str(ROOT), tests=str(ROOT / "tests" / "agents"), capture=capture, argv=argv
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return json.loads(r.stderr.strip().splitlines()[-1])


def _heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if m.split(".")[0] in HEAVY]


def test_nvml_agent_imports_no_numpy(fixtures_dir):
    capture = fixtures_dir / "nvidia-smi" / "linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01.txt"
    out = _run_agent(
        ["--source", "nvml", "--node", "n1", "--once", "--dry-run", "--log-level", "ERROR"],
        capture=str(capture),
    )
    assert out["rc"] == 0
    assert "agents.sources.nvml" in out["modules"]
    assert _heavy(out["modules"]) == []
    # The pusher speaks http.client: urllib.request is ~1 MiB more (only loaded for proxies).
    assert "agents.push" in out["modules"]
    assert "urllib.request" not in out["modules"]


def test_replay_agent_imports_no_numpy(tmp_path):
    csv = tmp_path / "s.csv"
    csv.write_text(
        "timestamp,node,gpu_uuid,job,project,util_pct,sm_active,mem_used_mib,power_w\n"
        "1767225600,n1,GPU-1,slurm:1,p,50,0.4,1000,300\n"
    )
    out = _run_agent(
        [
            "--source",
            "replay",
            "--replay-file",
            str(csv),
            "--replay-speed",
            "0",
            "--node",
            "n1",
            "--once",
            "--dry-run",
            "--log-level",
            "ERROR",
        ]
    )
    assert out["rc"] == 0
    assert _heavy(out["modules"]) == []


@pytest.fixture
def exporter(fixtures_dir):
    body = (fixtures_dir / "dcgm" / "datadog-integrations-core-metrics.txt").read_bytes()

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/metrics"
    srv.shutdown()
    srv.server_close()


def test_dcgm_agent_imports_no_numpy(exporter):
    out = _run_agent(
        [
            "--source",
            "dcgm",
            "--dcgm-url",
            exporter,
            "--node",
            "n1",
            "--once",
            "--dry-run",
            "--log-level",
            "ERROR",
        ]
    )
    assert out["rc"] == 0
    assert "prometheus_client.parser" in out["modules"]
    assert _heavy(out["modules"]) == []
