"""``GET /api/v1/efficiency?group=&start=&end=[&cluster=&gpu_model=]`` (session or personal
API token), answered by ``apps.telemetry.selectors.efficiency_by`` over what the caller may
see. Contract (DESIGN.md): ``[{"key", "allocated_gpu_hours", "observed_gpu_hours",
"busy_gpu_hours", "idle_gpu_hours", "memory_held_idle_gpu_hours", "efficiency", "cost",
"idle_cost"}]``: hours as numbers, efficiency a ratio 0..1 (null when nothing was observed),
money as strings with two decimals.
"""

from __future__ import annotations

import datetime as dt

from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from ninja import Router
from ninja.errors import HttpError

from apps.core.tokens import bearer_token, token_hash
from apps.telemetry.selectors import GROUPS, efficiency_by
from apps.tenancy.models import ApiToken
from apps.tenancy.selectors import projects_visible_to, user_sees_all_teams

router = Router(tags=["efficiency"])


def session_or_api_token(request):
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


def _moment(name: str, value: str | None) -> dt.datetime:
    """An ISO-8601 date or date-time; naive values are UTC."""
    if not value:
        raise HttpError(400, f"{name}: required (ISO-8601 date or date-time)")
    try:
        moment = parse_datetime(value)
        if moment is None:
            day = parse_date(value)
            if day is not None:
                moment = dt.datetime.combine(day, dt.time.min)
    except ValueError:
        moment = None
    if moment is None:
        raise HttpError(400, f"{name}: not an ISO-8601 date or date-time: {value!r}")
    if timezone.is_naive(moment):
        moment = moment.replace(tzinfo=dt.UTC)
    return moment


@router.get("/efficiency", auth=session_or_api_token, url_name="efficiency")
def efficiency_list(
    request,
    group: str | None = None,
    start: str | None = None,
    end: str | None = None,
    cluster: str | None = None,
    gpu_model: str | None = None,
):
    """Pooled efficiency and cost per team, project, allocation or GPU over whole hours
    starting in ``[start, end)``."""
    if group not in GROUPS:
        raise HttpError(400, f"group: expected one of {', '.join(GROUPS)}, got {group!r}")
    start_at = _moment("start", start)
    end_at = _moment("end", end)
    if start_at >= end_at:
        raise HttpError(400, "start: must be before end")
    user = request.auth
    projects = None if user_sees_all_teams(user=user) else projects_visible_to(user=user)
    rows = efficiency_by(
        group=group,
        start=start_at,
        end=end_at,
        projects=projects,
        cluster=cluster or None,
        gpu_model=gpu_model or None,
    )
    return [
        {
            "key": row.key,
            "allocated_gpu_hours": round(row.allocated_gpu_hours, 6),
            "observed_gpu_hours": round(row.observed_gpu_hours, 6),
            "busy_gpu_hours": round(row.busy_gpu_hours, 6),
            "idle_gpu_hours": round(row.idle_gpu_hours, 6),
            "memory_held_idle_gpu_hours": round(row.memory_held_idle_gpu_hours, 6),
            "efficiency": None if row.efficiency is None else round(row.efficiency, 6),
            "cost": f"{row.cost:.2f}",
            "idle_cost": f"{row.idle_cost:.2f}",
        }
        for row in rows
    ]
