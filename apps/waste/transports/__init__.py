"""Notification transports: one module per channel behind one base class, one registry.

The base class owns what every channel shares: turning the outcome of ``send`` into the
outbox row's next state. A ``TransientError`` (timeouts, 5xx, 429) retries with exponential
backoff up to ``max_attempts``; a ``PermanentError`` (a 404 from a deleted webhook, a refused
address) fails at once and marks the channel broken so the findings page shows it.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings

from apps.waste.models import Notification, Status

log = logging.getLogger(__name__)


class TransientError(Exception):
    """Worth trying again later."""


class PermanentError(Exception):
    """Trying again will not help; someone must fix the channel."""


class Transport:
    """Base of every channel. Subclasses implement ``send`` and may override the rest."""

    name = ""
    max_attempts = 8

    def send(self, *, notification: Notification) -> None:
        raise NotImplementedError

    def on_permanent_failure(self, *, notification: Notification, error: str, now) -> None:
        """Called once when a notification fails for good."""

    def on_success(self, *, notification: Notification, now) -> None:
        """Called after a successful send."""

    def obsolete(self, *, notification: Notification) -> str | None:
        """A reason not to send any more (the finding was acknowledged meanwhile), or None."""
        finding = notification.finding
        if finding is None:
            return None
        if notification.kind == Notification.Kind.REMINDER and finding.status != Status.OPEN:
            return f"not sent: finding is {finding.status}"
        if notification.kind == Notification.Kind.OPENED and finding.status == Status.RESOLVED:
            # Cleared before it could be sent (a GPU back after a blip): no news is good news.
            return "not sent: finding already resolved"
        return None

    @staticmethod
    def backoff(*, attempts: int) -> dt.timedelta:
        base = getattr(settings, "FLOPWATCH_NOTIFY_BACKOFF_S", 60)
        return dt.timedelta(seconds=min(base * 2 ** max(0, attempts - 1), 6 * 3600))

    def deliver(self, *, notification: Notification, now: dt.datetime) -> str:
        """Send a claimed notification and record the outcome: sent, retried or failed."""
        rows = Notification.objects.filter(pk=notification.pk, state=Notification.State.SENDING)
        reason = self.obsolete(notification=notification)
        if reason:
            rows.update(state=Notification.State.FAILED, last_error=reason)
            return "skipped"
        try:
            self.send(notification=notification)
        except PermanentError as exc:
            error = str(exc)[:2000]
            rows.update(state=Notification.State.FAILED, last_error=error)
            self.on_permanent_failure(notification=notification, error=error, now=now)
            log.warning("notification %s failed for good: %s", notification.pk, error)
            return "failed"
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:2000]
            if notification.attempts >= self.max_attempts:
                rows.update(state=Notification.State.FAILED, last_error=error)
                self.on_permanent_failure(notification=notification, error=error, now=now)
                return "failed"
            rows.update(
                state=Notification.State.PENDING,
                last_error=error,
                next_attempt_at=now + self.backoff(attempts=notification.attempts),
            )
            log.info("notification %s will be retried: %s", notification.pk, error)
            return "retried"
        rows.update(state=Notification.State.SENT, sent_at=now, last_error="")
        self.on_success(notification=notification, now=now)
        return "sent"


def _registry() -> dict[str, Transport]:
    from apps.waste.transports.email import EmailTransport
    from apps.waste.transports.webhook import WebhookTransport

    return {t.name: t for t in (EmailTransport(), WebhookTransport())}


TRANSPORTS: dict[str, Transport] = {}


def transport_for(name: str) -> Transport:
    if not TRANSPORTS:
        TRANSPORTS.update(_registry())
    try:
        return TRANSPORTS[name]
    except KeyError:
        raise ValueError(f"no transport named {name!r}; known: {', '.join(TRANSPORTS)}") from None
