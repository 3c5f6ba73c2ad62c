"""Slack-compatible incoming webhooks (Slack, Mattermost, Rocket.Chat, Teams' Slack mode)."""

from __future__ import annotations

import requests
from django.utils import timezone

from apps.waste.messages import finding_context, webhook_payload
from apps.waste.models import Channel, Notification
from apps.waste.transports import PermanentError, TransientError, Transport

TIMEOUT_S = 10


class WebhookTransport(Transport):
    name = "webhook"

    def send(self, *, notification: Notification) -> None:
        channel = notification.webhook
        if channel is None or not channel.enabled:
            raise PermanentError("the webhook channel was removed or disabled")
        payload = webhook_payload(context=finding_context(finding=notification.finding))
        try:
            response = requests.post(channel.url, json=payload, timeout=TIMEOUT_S)
        except requests.RequestException as exc:
            raise TransientError(f"{type(exc).__name__}: {exc}") from exc
        status = response.status_code
        if 200 <= status < 300:
            return
        # 408 and 429 say "later"; any other 4xx says the URL or payload is wrong for good.
        if 400 <= status < 500 and status not in (408, 429):
            raise PermanentError(f"HTTP {status} from the webhook: {response.text[:200]}")
        raise TransientError(f"HTTP {status} from the webhook")

    def on_permanent_failure(self, *, notification: Notification, error: str, now) -> None:
        if notification.webhook_id:
            Channel.objects.filter(pk=notification.webhook_id).update(
                broken=True, last_error=error, last_error_at=now or timezone.now()
            )

    def on_success(self, *, notification: Notification, now) -> None:
        if notification.webhook_id:
            Channel.objects.filter(pk=notification.webhook_id, broken=True).update(broken=False)
