"""``POST /api/v1/allocations``: schedulers (Slurm prolog/epilog, Kubernetes controllers)
say who holds which GPUs, from when until when. Authenticated with a service token."""

from __future__ import annotations

import logging
from datetime import datetime

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from ninja import Router, Schema, Status
from ninja.security import HttpBearer

from apps.core.tokens import token_hash
from apps.fleet.models import ServiceToken
from apps.tenancy.services import AllocationInputError, allocation_upsert

log = logging.getLogger(__name__)
router = Router(tags=["allocations"])


class ServiceTokenAuth(HttpBearer):
    """A service token (``manage.py create_service_token NAME``), not revoked."""

    openapi_scheme = "bearer"

    def authenticate(self, request: HttpRequest, token: str) -> ServiceToken | None:
        service_token = ServiceToken.objects.filter(
            token_hash=token_hash(token=token), revoked_at__isnull=True
        ).first()
        if service_token is not None:
            ServiceToken.objects.filter(pk=service_token.pk).update(last_used_at=timezone.now())
        return service_token


class AllocationIn(Schema):
    external_id: str
    project: str
    user: str = ""
    gpus: list[str] = []
    start: datetime
    end: datetime | None = None


class AllocationOut(Schema):
    id: int
    source: str
    external_id: str
    project: str
    user: str
    gpus: list[str]
    start: datetime
    end: datetime | None
    created: bool


class ErrorItem(Schema):
    path: str
    message: str


class ErrorsOut(Schema):
    detail: str
    errors: list[ErrorItem] = []


@router.post(
    "/allocations",
    auth=ServiceTokenAuth(),
    url_name="allocations",
    response={200: AllocationOut, 201: AllocationOut, 400: ErrorsOut, 503: ErrorsOut},
    summary="Open, close or re-open an allocation",
)
def allocations_post(request: HttpRequest, payload: AllocationIn):
    """Open an allocation (`end: null`), close it (the same call with `end`), re-open it
    (`end: null` again). Idempotent: repeating a call changes nothing. GPUs are added, never
    removed. 201 when created, 200 otherwise."""
    try:
        result = allocation_upsert(
            external_id=payload.external_id,
            project=payload.project,
            user=payload.user,
            gpus=payload.gpus,
            start=payload.start,
            end=payload.end,
        )
    except AllocationInputError as exc:
        return Status(
            400,
            {
                "detail": "invalid allocation",
                "errors": [{"path": p, "message": m} for p, m in exc.errors],
            },
        )
    except (OperationalError, InterfaceError) as exc:
        log.warning("allocation refused, database unavailable: %s", exc)
        response = JsonResponse({"detail": "storage unavailable, retry later"}, status=503)
        response["Retry-After"] = "10"
        return response
    allocation = result.allocation
    return Status(
        201 if result.created else 200,
        {
            "id": allocation.pk,
            "source": allocation.source,
            "external_id": allocation.external_id,
            "project": allocation.project.slug,
            "user": allocation.user_name,
            "gpus": sorted(allocation.gpus.values_list("uuid", flat=True)),
            "start": allocation.start,
            "end": allocation.end,
            "created": result.created,
        },
    )
