"""Shared fixtures for the agent tests: real-capture fixture folder and a real HTTP sink."""

from __future__ import annotations

import gzip
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"


@pytest.fixture
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        if os.environ.get("FLOPWATCH_REQUIRE_ALL") == "1":
            pytest.fail(f"fixtures folder {FIXTURES} is missing")
        pytest.skip(f"fixtures folder {FIXTURES} is missing")
    return FIXTURES


class Sink:
    """A real HTTP server on 127.0.0.1 that stores what agents push; can stop and restart
    on the same port. ``status`` forces an answer (e.g. 503), ``headers`` adds headers."""

    def __init__(self) -> None:
        self.samples: list[tuple[str, float]] = []
        self.batch_ids: list[str] = []
        self.payloads: list[dict] = []
        self.status = 202
        self.headers: dict[str, str] = {}
        self.lock = threading.Lock()
        self.port = 0
        self._srv: ThreadingHTTPServer | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        sink = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if sink.status != 202:
                    self.send_response(sink.status)
                    for k, v in sink.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                    return
                assert self.headers["Authorization"] == "Bearer tok"
                payload = json.loads(gzip.decompress(body))
                with sink.lock:
                    sink.payloads.append(payload)
                    sink.batch_ids.append(payload["batch_id"])
                    n = 0
                    for s in payload["series"]:
                        for t in s["ts"]:
                            sink.samples.append((s["gpu"], t))
                            n += 1
                out = json.dumps({"accepted": n, "duplicates": 0}).encode()
                self.send_response(202)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self._srv = ThreadingHTTPServer(("127.0.0.1", self.port), H)
        self._srv.daemon_threads = True
        self.port = self._srv.server_address[1]
        threading.Thread(target=self._srv.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._srv:
            self._srv.shutdown()
            self._srv.server_close()
            self._srv = None


@pytest.fixture
def sink():
    s = Sink()
    yield s
    s.stop()
