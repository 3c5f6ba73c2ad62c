"""``POST /api/v1/samples``: agents push sample batches (DESIGN.md contract).

The body is read here, not by Ninja's schema parsing: a batch of 10,000 samples as Pydantic
objects would cost more than everything else on the request together. The endpoint still
documents its body (and answers) in the OpenAPI document.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, JsonResponse
from ninja import Router

from apps.core.tokens import bearer_token
from apps.telemetry.ingest import IngestError, IngestForbidden, IngestTooLarge, body_parse
from apps.telemetry.ingest import body_read as ingest_body_read
from apps.telemetry.services import gpu_samples_ingest, node_for_token

log = logging.getLogger(__name__)
router = Router(tags=["samples"])

RETRY_AFTER_S = 10


def _answer(status: int, body: dict, **headers: str) -> JsonResponse:
    response = JsonResponse(body, status=status)
    for name, value in headers.items():
        response[name] = value
    return response


_SERIES_SCHEMA = {
    "type": "object",
    "required": ["gpu", "ts"],
    "additionalProperties": False,
    "properties": {
        "gpu": {"type": "string", "description": "GPU (or MIG instance) UUID"},
        "alloc": {
            "type": ["object", "null"],
            "required": ["job"],
            "properties": {
                "job": {"type": "string", "example": "slurm:123456"},
                "project": {"type": "string"},
                "user": {"type": "string"},
            },
        },
        "ts": {
            "type": "array",
            "items": {"type": "number"},
            "description": "epoch seconds, strictly increasing",
        },
        **{
            name: {
                "type": ["array", "null"],
                "items": {"type": ["number", "null"]},
                "description": desc,
            }
            for name, desc in (
                ("util_pct", "0-100"),
                ("sm_active", "0-1"),
                ("sm_occupancy", "0-1"),
                ("tensor_active", "0-1"),
                ("dram_active", "0-1"),
                ("gr_engine_active", "0-1"),
                ("mem_used_mib", ">= 0"),
                ("power_w", ">= 0"),
                ("temp_c", "-100-200"),
                ("sm_clock_mhz", ">= 0"),
                ("energy_mj", ">= 0, a counter"),
                ("xid", "last XID, integer >= 0"),
            )
        },
    },
}
BATCH_SCHEMA = {
    "type": "object",
    "required": ["node", "series"],
    "properties": {
        "node": {"type": "string", "description": "hostname; must be the token's node"},
        "batch_id": {"type": "string"},
        "agent": {
            "type": "object",
            "properties": {
                "version": {"type": "string"},
                "source": {"type": "string"},
                "interval_s": {"type": "number"},
                "stats": {"type": "object"},
            },
        },
        "gpus": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["uuid"],
                "properties": {
                    "uuid": {"type": "string"},
                    "index": {"type": "integer"},
                    "model": {"type": ["string", "null"]},
                    "mem_total_mib": {"type": ["integer", "null"]},
                    "mig_parent": {"type": ["string", "null"]},
                    "mig_profile": {"type": ["string", "null"]},
                },
            },
        },
        "series": {"type": "array", "items": _SERIES_SCHEMA},
    },
}
_ERROR = {"type": "object", "properties": {"detail": {"type": "string"}}}
OPENAPI_EXTRA = {
    "requestBody": {
        "required": True,
        "description": "A sample batch (optionally `Content-Encoding: gzip`).",
        "content": {"application/json": {"schema": BATCH_SCHEMA}},
    },
    "responses": {
        "202": {
            "description": "Stored; counts in samples.",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "accepted": {"type": "integer"},
                            "duplicates": {"type": "integer"},
                        },
                    }
                }
            },
        },
        "400": {
            "description": "Invalid batch: every error with its path; nothing stored.",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "detail": {"type": "string"},
                            "errors": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "path": {"type": "string"},
                                        "message": {"type": "string"},
                                    },
                                },
                            },
                        },
                    }
                }
            },
        },
        "401": {
            "description": "Missing or unknown node token.",
            "content": {"application/json": {"schema": _ERROR}},
        },
        "403": {
            "description": "A node or GPU that is not this token's.",
            "content": {"application/json": {"schema": _ERROR}},
        },
        "413": {
            "description": "Body or batch too large.",
            "content": {"application/json": {"schema": _ERROR}},
        },
        "503": {
            "description": "Storage unavailable; retry after `Retry-After` seconds.",
            "content": {"application/json": {"schema": _ERROR}},
        },
    },
}


@router.post("/samples", url_name="samples", openapi_extra=OPENAPI_EXTRA, summary="Push samples")
def samples_post(request: HttpRequest):
    """Store a batch of GPU samples from a node agent (`Authorization: Bearer <node token>`)."""
    max_bytes = settings.FLOPWATCH_INGEST_MAX_BODY_BYTES
    try:
        token = bearer_token(authorization=request.headers.get("Authorization"))
        node = node_for_token(token=token) if token else None
        if node is None:
            return _answer(401, {"detail": "missing or unknown node token"})
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > max_bytes:
            return _answer(413, {"detail": f"body larger than {max_bytes} bytes"})
        data = ingest_body_read(
            stream=request,
            content_encoding=request.headers.get("Content-Encoding"),
            max_bytes=max_bytes,
        )
        result = gpu_samples_ingest(node=node, batch=body_parse(data))
    except IngestError as exc:
        errors = [{"path": p, "message": m} for p, m in exc.errors]
        return _answer(400, {"detail": "invalid batch; nothing stored", "errors": errors})
    except IngestForbidden as exc:
        return _answer(403, {"detail": str(exc)})
    except IngestTooLarge as exc:
        return _answer(413, {"detail": str(exc)})
    except (OperationalError, InterfaceError) as exc:
        log.warning("samples refused, database unavailable: %s", exc)
        return _answer(
            503,
            {"detail": "storage unavailable; nothing stored, retry later"},
            **{"Retry-After": str(RETRY_AFTER_S)},
        )
    return _answer(202, {"accepted": result.accepted, "duplicates": result.duplicates})
