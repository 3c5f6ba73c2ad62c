"""Builders for sample batches and nodes with tokens, shared by the ingest tests."""

from __future__ import annotations

import gzip
import time

import orjson

from apps.fleet.models import Node
from apps.fleet.services import node_get_or_create, node_token_issue

SAMPLES_URL = "/api/v1/samples"
H100 = "NVIDIA H100 80GB HBM3"


def node_with_token(hostname: str = "gpu-node-001", cluster: str = "test") -> tuple[Node, str]:
    node, _ = node_get_or_create(hostname=hostname, cluster_slug=cluster)
    return node, node_token_issue(node=node)


def gpu_uuid(node: str, index: int) -> str:
    return f"GPU-{node}-{index:02d}"


def make_batch(
    *,
    node: str = "gpu-node-001",
    gpus: int = 2,
    points: int = 5,
    start: int | None = None,
    interval: int = 10,
    job: str | None = "slurm:1001",
    project: str | None = "llm-pretrain",
    util: float = 50.0,
) -> dict:
    start = start if start is not None else int(time.time()) - points * interval - 60
    ts = [start + i * interval for i in range(points)]
    return {
        "node": node,
        "batch_id": f"b-{start}",
        "agent": {"version": "0.1.0", "source": "sim", "interval_s": interval},
        "gpus": [
            {"uuid": gpu_uuid(node, i), "index": i, "model": H100, "mem_total_mib": 81559}
            for i in range(gpus)
        ],
        "series": [
            {
                "gpu": gpu_uuid(node, i),
                "alloc": {"job": job, "project": project, "user": "alice"} if job else None,
                "ts": ts,
                "util_pct": [util] * points,
                "sm_active": [util / 100] * points,
                "mem_used_mib": [40960.0] * points,
                "power_w": [400.0] * points,
                "temp_c": [60] * points,
            }
            for i in range(gpus)
        ],
    }


def post(client, token: str | None, body, *, gzip_it: bool = False, raw: bytes | None = None):
    data = raw if raw is not None else orjson.dumps(body)
    headers = {}
    if gzip_it:
        data = gzip.compress(data)
        headers["HTTP_CONTENT_ENCODING"] = "gzip"
    if token is not None:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client.post(SAMPLES_URL, data=data, content_type="application/json", **headers)
