"""Pusher transport: TLS verification, proxies from the environment, redirects, gzip.

Real servers on 127.0.0.1 (plain and TLS with a throwaway self-signed certificate).
"""

from __future__ import annotations

import gzip
import json
import shutil
import socket
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agents.push import Pusher

PAYLOAD = {"batch_id": "b1", "agent": {"version": "t"}, "series": []}


class Recorder:
    """HTTP(S) server that records request line, headers and body, answers ``status``."""

    def __init__(self, *, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[dict] = []
        self.status = 202
        self.headers: dict[str, str] = {}
        rec = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                rec.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body}
                )
                self.send_response(rec.status)
                for k, v in rec.headers.items():
                    self.send_header(k, v)
                out = b'{"accepted": 0, "duplicates": 0}'
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        if tls is not None:
            self.srv.socket = tls.wrap_socket(self.srv.socket, server_side=True)
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def recorder():
    r = Recorder()
    yield r
    r.close()


@pytest.fixture
def tls_server(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    r = Recorder(tls=ctx)
    r.cert = cert
    yield r
    r.close()


def test_gzip_json_with_token_and_answer(recorder):
    res = Pusher(server=f"http://127.0.0.1:{recorder.port}/", token="tok").send(PAYLOAD)
    assert (res.outcome, res.status, res.accepted, res.duplicates) == ("ok", 202, 0, 0)
    req = recorder.requests[0]
    assert req["path"] == "/api/v1/samples"
    assert req["headers"]["Authorization"] == "Bearer tok"
    assert req["headers"]["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(req["body"])) == PAYLOAD


def test_tls_certificate_and_hostname_are_verified(tls_server, monkeypatch):
    url = f"https://127.0.0.1:{tls_server.port}"
    res = Pusher(server=url, token="tok", timeout_s=5).send(PAYLOAD)
    assert res.outcome == "retry"
    assert "CERTIFICATE_VERIFY_FAILED" in res.detail
    assert tls_server.requests == []
    # Trusted (a private CA through SSL_CERT_FILE, as an admin would): delivered.
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_server.cert))
    res = Pusher(server=url, token="tok", timeout_s=5).send(PAYLOAD)
    assert (res.outcome, res.status) == ("ok", 202)
    # Trusted certificate, wrong name: refused all the same.
    res = Pusher(server=f"https://localhost:{tls_server.port}", token="t", timeout_s=5).send(
        PAYLOAD
    )
    assert res.outcome == "retry"
    assert "CERTIFICATE_VERIFY_FAILED" in res.detail
    assert len(tls_server.requests) == 1


def test_http_proxy_from_environment(recorder, monkeypatch):
    monkeypatch.setenv("http_proxy", f"http://agent:s%40cret@127.0.0.1:{recorder.port}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    res = Pusher(server="http://flopwatch.invalid:8000", token="tok").send(PAYLOAD)
    assert res.outcome == "ok"
    req = recorder.requests[0]
    assert req["path"] == "http://flopwatch.invalid:8000/api/v1/samples"
    assert req["headers"]["Proxy-Authorization"] == "Basic YWdlbnQ6c0BjcmV0"  # agent:s@cret


def test_no_proxy_bypasses_the_proxy(recorder, monkeypatch):
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    res = Pusher(server=f"http://127.0.0.1:{recorder.port}", token="tok").send(PAYLOAD)
    assert res.outcome == "ok"
    assert "Proxy-Authorization" not in recorder.requests[0]["headers"]


def test_redirect_is_rejected_with_its_location(recorder):
    recorder.status, recorder.headers = 301, {"Location": "https://elsewhere/api/v1/samples"}
    res = Pusher(server=f"http://127.0.0.1:{recorder.port}", token="tok").send(PAYLOAD)
    assert (res.outcome, res.status) == ("reject", 301)
    assert "https://elsewhere" in res.detail


def test_429_honours_retry_after_and_network_errors_retry(recorder):
    recorder.status, recorder.headers = 429, {"Retry-After": "90"}
    p = Pusher(server=f"http://127.0.0.1:{recorder.port}", token="tok")
    res = p.send(PAYLOAD)
    assert (res.outcome, res.status) == ("retry", 429)
    assert 90 <= res.delay_s <= 3600
    recorder.close()
    res = p.send(PAYLOAD)
    assert res.outcome == "retry"
    assert res.detail.startswith("network: ")
    assert 0.5 <= res.delay_s <= 60


@pytest.fixture
def connect_proxy():
    """A CONNECT-only proxy that relays bytes and records the CONNECT lines and headers."""
    seen: list[tuple[str, str | None]] = []

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

        def do_CONNECT(self) -> None:
            seen.append((self.path, self.headers.get("Proxy-Authorization")))
            host, port = self.path.rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)), timeout=5)
            self.send_response(200, "Connection established")
            self.end_headers()
            pipes = [
                threading.Thread(target=_relay, args=(self.connection, upstream), daemon=True),
                threading.Thread(target=_relay, args=(upstream, self.connection), daemon=True),
            ]
            for t in pipes:
                t.start()
            for t in pipes:
                t.join(10)
            upstream.close()

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1], seen
    srv.shutdown()
    srv.server_close()


def _relay(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def test_https_through_connect_proxy_still_verifies(tls_server, connect_proxy, monkeypatch):
    port, seen = connect_proxy
    monkeypatch.setenv("https_proxy", f"http://agent:pw@127.0.0.1:{port}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    url = f"https://127.0.0.1:{tls_server.port}"
    res = Pusher(server=url, token="tok", timeout_s=5).send(PAYLOAD)
    assert res.outcome == "retry"  # tunnelled, and the server's certificate is still checked
    assert "CERTIFICATE_VERIFY_FAILED" in res.detail
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_server.cert))
    res = Pusher(server=url, token="tok", timeout_s=5).send(PAYLOAD)
    assert (res.outcome, res.status) == ("ok", 202)
    assert seen[-1] == (f"127.0.0.1:{tls_server.port}", "Basic YWdlbnQ6cHc=")  # agent:pw
    assert tls_server.requests[0]["path"] == "/api/v1/samples"
