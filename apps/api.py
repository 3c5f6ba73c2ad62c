"""The HTTP API at /api/v1/: one NinjaAPI, one router per domain app.

The OpenAPI document is generated from the routers at /api/v1/openapi.json.
"""

from ninja import NinjaAPI

from apps.telemetry.api import router as telemetry_router
from apps.telemetry.api_efficiency import router as efficiency_router
from apps.tenancy.api import router as tenancy_router
from apps.waste.api import router as waste_router

api = NinjaAPI(
    title="flopwatch API",
    version="1",
    description="GPU samples in, efficiency, findings and allocations out.",
    urls_namespace="api",
    openapi_url="/openapi.json",
    docs_url="/docs",
)
api.add_router("", telemetry_router)
api.add_router("", efficiency_router)
api.add_router("", tenancy_router)
api.add_router("", waste_router)
