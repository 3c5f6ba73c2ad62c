"""Send one batch to the server and classify the answer.

The pusher never sleeps: it returns a verdict and, for retryable failures, the delay
before the next try (jittered exponential backoff 0.5 s .. 60 s, or the server's
``Retry-After``). The agent loop keeps sampling while it waits.

It speaks ``http.client`` directly rather than ``urllib.request``: the agent runs on every
GPU node, and urllib.request (cookie, auth, FTP and file handlers, tempfile, hashlib) costs
about 1 MiB more resident memory for nothing the agent uses. What urllib gave for free is
kept: certificate and hostname verification for ``https://`` (the system trust store,
``SSL_CERT_FILE`` for a private CA) and the ``http_proxy``/``https_proxy``/``no_proxy``
environment variables.
"""

from __future__ import annotations

import base64
import email.utils
import gzip
import http.client
import json
import logging
import os
import random
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 60.0
RETRY_AFTER_MAX_S = 3600.0  # a misconfigured proxy must not park the agent for a day


@dataclass(slots=True)
class PushResult:
    """``ok``: accepted; ``retry``: try again after ``delay_s``; ``reject``: never retry."""

    outcome: str
    status: int | None = None
    detail: str = ""
    delay_s: float = 0.0
    accepted: int | None = None
    duplicates: int | None = None


class Backoff:
    """Jittered exponential backoff ("equal jitter": half fixed, half random)."""

    def __init__(
        self,
        *,
        low: float = BACKOFF_MIN_S,
        high: float = BACKOFF_MAX_S,
        rng: random.Random | None = None,
    ) -> None:
        self.low, self.high = low, high
        self.attempts = 0
        self._rng = rng or random.Random()

    def next_delay(self, *, retry_after: float | None = None) -> float:
        cap = min(self.high, self.low * (2**self.attempts))
        self.attempts += 1
        delay = max(self.low, cap / 2 + self._rng.uniform(0, cap / 2))
        if retry_after is not None:
            # Honour the server's wish, but never retry sooner than our own backoff says.
            delay = max(delay, min(retry_after, RETRY_AFTER_MAX_S))
        return delay

    def reset(self) -> None:
        self.attempts = 0


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; None if unusable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


def _proxy_for(*, scheme: str, host: str) -> urllib.parse.SplitResult | None:
    """The proxy urllib.request would use for this URL, or None.

    urllib.request (~1 MiB) is imported only when a proxy variable is set, so nodes without
    a proxy do not pay for it; its own functions keep the ``no_proxy`` rules identical.
    """
    if not any(k.lower() in ("http_proxy", "https_proxy") for k in os.environ):
        return None
    import urllib.request

    proxy = urllib.request.getproxies().get(scheme)
    if not proxy or urllib.request.proxy_bypass(host):
        return None
    return urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")


class Pusher:
    """POSTs gzip JSON to ``{server}/api/v1/samples`` with the node token."""

    def __init__(
        self,
        *,
        server: str,
        token: str,
        timeout_s: float = 30.0,
        backoff: Backoff | None = None,
    ) -> None:
        self.url = server.rstrip("/") + "/api/v1/samples"
        self.token = token
        self.timeout_s = timeout_s
        self.backoff = backoff or Backoff()
        # The scheme is checked (http/https only) when the configuration is loaded.
        self._parts = urllib.parse.urlsplit(self.url)
        self._ssl_context: Any = None

    def _connect(self) -> tuple[http.client.HTTPConnection, str, dict[str, str]]:
        """Connection, request target and extra headers (direct or through a proxy)."""
        u = self._parts
        https = u.scheme == "https"
        host, port = u.hostname or "", u.port
        if https and self._ssl_context is None:
            import ssl  # already loaded by http.client; the context is built once

            # Verifies the certificate chain and the hostname (like urllib.request did).
            self._ssl_context = ssl.create_default_context()
        proxy = _proxy_for(scheme=u.scheme, host=host)
        target = urllib.parse.urlunsplit(("", "", u.path, u.query, ""))
        extra: dict[str, str] = {}
        if proxy is None:
            conn: http.client.HTTPConnection = (
                http.client.HTTPSConnection(
                    host, port, timeout=self.timeout_s, context=self._ssl_context
                )
                if https
                else http.client.HTTPConnection(host, port, timeout=self.timeout_s)
            )
            return conn, target, extra
        if proxy.username:
            user, pw = (
                urllib.parse.unquote(proxy.username),
                urllib.parse.unquote(proxy.password or ""),
            )
            extra["Proxy-Authorization"] = (
                "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()
            )
        if https:  # CONNECT tunnel; TLS (and its verification) is end to end with the server
            conn = http.client.HTTPSConnection(
                proxy.hostname or "", proxy.port, timeout=self.timeout_s, context=self._ssl_context
            )
            conn.set_tunnel(host, port, headers=extra)
            return conn, target, {}
        conn = http.client.HTTPConnection(proxy.hostname or "", proxy.port, timeout=self.timeout_s)
        return conn, self.url, extra  # a plain-HTTP proxy takes the absolute URL

    def send(self, payload: dict[str, Any]) -> PushResult:
        body = gzip.compress(json.dumps(payload, separators=(",", ":")).encode(), 6)
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "User-Agent": f"flopwatch-agent/{payload.get('agent', {}).get('version', '?')}",
        }
        try:
            conn, target, extra = self._connect()
            try:
                conn.request("POST", target, body=body, headers=headers | extra)
                resp = conn.getresponse()
                status, raw = resp.status, resp.read()
                retry_after, location = resp.getheader("Retry-After"), resp.getheader("Location")
            finally:
                conn.close()
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, timeout, TLS
            reason = str(exc) or type(exc).__name__
            return PushResult(
                "retry", detail=f"network: {reason}", delay_s=self.backoff.next_delay()
            )
        if not 200 <= status < 300:
            detail = f"HTTP {status}: {raw[:2000].decode('utf-8', 'replace')}"
            if status == 429 or status >= 500:
                delay = self.backoff.next_delay(retry_after=parse_retry_after(retry_after))
                return PushResult("retry", status=status, detail=detail, delay_s=delay)
            if location:  # a redirect is never followed with the batch: say where it pointed
                detail += f" (Location: {location})"
            return PushResult("reject", status=status, detail=detail)
        self.backoff.reset()
        accepted = duplicates = None
        try:
            answer = json.loads(raw or b"{}")
            accepted, duplicates = answer.get("accepted"), answer.get("duplicates")
        except (ValueError, AttributeError):
            pass
        return PushResult("ok", status=status, accepted=accepted, duplicates=duplicates)
