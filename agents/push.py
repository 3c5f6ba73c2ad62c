"""Send one batch to the server and classify the answer.

The pusher never sleeps: it returns a verdict and, for retryable failures, the delay
before the next try (jittered exponential backoff 0.5 s .. 60 s, or the server's
``Retry-After``). The agent loop keeps sampling while it waits.
"""

from __future__ import annotations

import email.utils
import gzip
import json
import logging
import random
import time
import urllib.error
import urllib.request
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

    def send(self, payload: dict[str, Any]) -> PushResult:
        body = gzip.compress(json.dumps(payload, separators=(",", ":")).encode(), 6)
        # The scheme is checked (http/https only) when the configuration is loaded.
        req = urllib.request.Request(  # noqa: S310
            self.url,
            data=body,
            method="POST",
            headers={
                "Authorization": f"Bearer {self.token}",
                "Content-Type": "application/json",
                "Content-Encoding": "gzip",
                "User-Agent": f"flopwatch-agent/{payload.get('agent', {}).get('version', '?')}",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            status = exc.code
            detail = exc.read()[:2000].decode("utf-8", "replace")
            if status == 429 or status >= 500:
                delay = self.backoff.next_delay(
                    retry_after=parse_retry_after(exc.headers.get("Retry-After"))
                )
                return PushResult(
                    "retry", status=status, detail=f"HTTP {status}: {detail}", delay_s=delay
                )
            return PushResult("reject", status=status, detail=f"HTTP {status}: {detail}")
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            return PushResult(
                "retry", detail=f"network: {reason}", delay_s=self.backoff.next_delay()
            )
        self.backoff.reset()
        accepted = duplicates = None
        try:
            answer = json.loads(raw or b"{}")
            accepted, duplicates = answer.get("accepted"), answer.get("duplicates")
        except (ValueError, AttributeError):
            pass
        return PushResult("ok", status=status, accepted=accepted, duplicates=duplicates)
