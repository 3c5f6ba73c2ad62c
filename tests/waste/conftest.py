"""Fixtures of the waste tests: a finding on a real allocation, a real HTTP webhook server."""

from __future__ import annotations

import json
import threading
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.waste.scenario import H100, H100_MIB, T0, h


@pytest.fixture
def make_finding(personas):
    """A finding on an allocation of a project (a1 unless told), as detection would open it."""
    from apps.fleet.models import Cluster, Gpu, Node
    from apps.tenancy.models import Allocation, AllocationGpu
    from apps.waste.models import Finding, FindingEvent

    counter = {"n": 0}

    def make(*, project=None, rule="idle_allocation", status="open", **extra):
        counter["n"] += 1
        n = counter["n"]
        project = project or personas.project_a1
        cluster, _ = Cluster.objects.get_or_create(slug="cf", defaults={"name": "CF"})
        node, _ = Node.objects.get_or_create(hostname="fnode", defaults={"cluster": cluster})
        gpu = Gpu.objects.create(
            uuid=f"GPU-f-{n}", node=node, index=n, model_name=H100, mem_total_mib=H100_MIB
        )
        allocation = Allocation.objects.create(
            source="slurm", external_id=f"slurm:9{n:03d}", project=project, user_name="alice",
            start=T0,
        )  # fmt: skip
        AllocationGpu.objects.create(allocation=allocation, gpu=gpu)
        values = {
            "rule": rule, "subject": f"alloc:{allocation.id}", "allocation": allocation,
            "project": project, "started": h(1), "last_seen": h(3), "detected_at": h(2),
            "wasted_gpu_hours": 2.0, "wasted_cost": Decimal("4.00"),
            "wasted_cost_exact": Decimal("4.00"), "status": status,
        }  # fmt: skip
        values.update(extra)
        finding = Finding.objects.create(**values)
        finding.gpus.set([gpu])
        FindingEvent.objects.create(finding=finding, kind="opened", new_status=status, at=h(2))
        return finding

    return make


class _Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        server = self.server
        with server.lock:
            status = server.script.pop(0) if server.script else server.default_status
            server.requests.append((status, json.loads(body or b"{}")))
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"ok" if status < 300 else b"no such hook")

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook_server():
    """Start real HTTP servers on 127.0.0.1; ``script`` lists the statuses to answer."""
    servers = []

    def start(*, script=(), default_status=200):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
        server.script = list(script)
        server.default_status = default_status
        server.requests = []
        server.lock = threading.Lock()
        server.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/team"
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
