"""``GET /api/v1/findings`` (session or personal API token), filtered by visibility.

Contract (DESIGN.md): ``[{"id", "type", "project", "allocation", "gpus", "started",
"wasted_gpu_hours", "wasted_cost", "severity", "status"}]``; money as a string with two
decimals, ``project`` the slug, ``allocation`` the external id, ``gpus`` the UUIDs.
"""

from __future__ import annotations

from django.utils import timezone
from ninja import Router
from ninja.errors import HttpError

from apps.core.tokens import bearer_token, token_hash
from apps.tenancy.models import ApiToken
from apps.waste.models import Status
from apps.waste.selectors import findings_visible_to

router = Router(tags=["findings"])


def session_or_token(request):
    """The request's user from its session, else from ``Authorization: Bearer <api token>``."""
    if getattr(request, "user", None) is not None and request.user.is_authenticated:
        return request.user
    token = bearer_token(authorization=request.headers.get("Authorization"))
    if not token:
        return None
    api_token = (
        ApiToken.objects.select_related("user")
        .filter(token_hash=token_hash(token=token), revoked_at__isnull=True)
        .first()
    )
    if api_token is None or not api_token.user.is_active:
        return None
    ApiToken.objects.filter(pk=api_token.pk).update(last_used_at=timezone.now())
    request.user = api_token.user
    return api_token.user


@router.get("/findings", auth=session_or_token, url_name="findings")
def findings_list(request, status: str | None = None, type: str | None = None):
    """Findings the caller may see, newest first; ``status`` open, acknowledged, snoozed or
    resolved (or ``active`` for any but resolved); ``type`` a rule name."""
    user = request.auth
    qs = findings_visible_to(user=user).prefetch_related("gpus")
    if status:
        if status == "active":
            qs = qs.exclude(status=Status.RESOLVED)
        elif status in Status.values:
            qs = qs.filter(status=status)
        else:
            raise HttpError(400, f"status: expected one of active, {', '.join(Status.values)}")
    if type:
        qs = qs.filter(rule=type)
    return [
        {
            "id": f.id,
            "type": f.rule,
            "project": f.project.slug if f.project else None,
            "allocation": f.allocation.external_id if f.allocation else None,
            "gpus": [g.uuid for g in f.gpus.all()],
            "started": f.started.isoformat(),
            "wasted_gpu_hours": round(f.wasted_gpu_hours, 3),
            "wasted_cost": f"{f.wasted_cost:.2f}",
            "severity": f.severity,
            "status": f.status,
        }
        for f in qs[:5000]
    ]
