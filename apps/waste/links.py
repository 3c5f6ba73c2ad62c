"""Signed acknowledge/snooze links for e-mails.

A link carries the finding, the action and the user it was sent to, signed with the
SECRET_KEY (``django.core.signing``) and valid for ``FLOPWATCH_LINK_MAX_AGE_S``. It proves who
clicked without a session; acting still asks ``user_can_act_on_project``, so a forwarded link
or one whose recipient lost their role does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.core import signing
from django.urls import reverse

SALT = "flopwatch.waste.finding-action"
ACTIONS = ("acknowledge", "snooze")


class LinkError(Exception):
    """The link is tampered with, expired or malformed."""


@dataclass(frozen=True)
class ActionLink:
    finding_id: int
    user_id: int
    action: str


def action_token_make(*, finding_id: int, user_id: int, action: str) -> str:
    if action not in ACTIONS:
        raise ValueError(f"action: expected one of {', '.join(ACTIONS)}, got {action!r}")
    return signing.dumps({"f": finding_id, "u": user_id, "a": action}, salt=SALT, compress=True)


def action_url_make(*, finding_id: int, user_id: int, action: str) -> str:
    token = action_token_make(finding_id=finding_id, user_id=user_id, action=action)
    return settings.FLOPWATCH_BASE_URL + reverse("waste:act", kwargs={"token": token})


def action_token_read(*, token: str) -> ActionLink:
    try:
        data = signing.loads(token, salt=SALT, max_age=settings.FLOPWATCH_LINK_MAX_AGE_S)
    except signing.SignatureExpired:
        raise LinkError("this link has expired; open the finding from the findings page") from None
    except signing.BadSignature:
        raise LinkError("this link is not valid (it may have been changed)") from None
    try:
        link = ActionLink(int(data["f"]), int(data["u"]), str(data["a"]))
    except (KeyError, TypeError, ValueError):
        raise LinkError("this link is not valid") from None
    if link.action not in ACTIONS:
        raise LinkError("this link is not valid")
    return link
