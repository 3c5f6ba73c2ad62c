from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from apps.core.health import broker_check, database_check


@require_GET
@never_cache
def healthz(request):
    """200 when the database and the broker answer, else 503 naming what is down."""
    checks = {"database": database_check(), "broker": broker_check()}
    body = {name: ("ok" if error is None else error) for name, error in checks.items()}
    healthy = all(error is None for error in checks.values())
    body["status"] = "ok" if healthy else "unavailable"
    return JsonResponse(body, status=200 if healthy else 503)
