"""E-mail: finding alerts and reminders to project owners, the digest to fleet admins."""

from __future__ import annotations

import smtplib

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.template.loader import render_to_string

from apps.waste.messages import digest_context, finding_context
from apps.waste.models import Notification
from apps.waste.transports import PermanentError, Transport


class EmailTransport(Transport):
    name = "email"

    def obsolete(self, *, notification: Notification) -> str | None:
        from apps.waste.models import NotificationPreference

        if NotificationPreference.objects.filter(
            user_id=notification.user_id, email_opt_out=True
        ).exists():
            return "not sent: the user opted out"
        return super().obsolete(notification=notification)

    def send(self, *, notification: Notification) -> None:
        if notification.kind == Notification.Kind.DIGEST:
            context = digest_context(user=notification.user, since=notification.digest_since)
            template = "waste/email/digest"
            subject = (
                f"flopwatch digest: {context['open_count']} open findings, "
                f"{context['total_cost']} {context['currency']} wasted"
            )
        else:
            context = finding_context(finding=notification.finding, user=notification.user)
            template = "waste/email/finding"
            prefix = "Reminder: " if notification.kind == Notification.Kind.REMINDER else ""
            context["reminder"] = bool(prefix)
            subject = f"{prefix}{context['headline']}"
        text = render_to_string(f"{template}.txt", context)
        html = render_to_string(f"{template}.html", context)
        message = EmailMultiAlternatives(
            subject=subject,
            body=text,
            from_email=settings.DEFAULT_FROM_EMAIL,
            to=[notification.recipient],
        )
        message.attach_alternative(html, "text/html")
        try:
            message.send()
        except smtplib.SMTPRecipientsRefused as exc:
            raise PermanentError(f"recipient refused: {exc}") from exc
