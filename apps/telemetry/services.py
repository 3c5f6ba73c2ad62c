"""Writes to telemetry: storing sample batches (agents, CSV imports) with their attribution."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils.text import slugify

from apps.core.tokens import token_hash
from apps.fleet.models import Gpu, Node
from apps.telemetry.ingest import (
    CheckedBatch,
    IngestError,
    IngestForbidden,
    IngestResult,
    batch_check,
)
from apps.telemetry.models import AllocationSeen, RollupPending
from apps.telemetry.pending import BUCKET_S, rollup_pending_mark, rollup_pending_mark_range
from apps.telemetry.storage import (
    raw_partitions_ensure,
    raw_partitions_forget,
    raw_samples_store,
    raw_stage_prepare,
)
from apps.tenancy.models import Allocation, AllocationGpu, Project, Team

__all__ = [
    "IngestError",
    "IngestForbidden",
    "IngestResult",
    "gpu_samples_ingest",
    "ingest_caches_clear",
    "job_source",
    "node_for_token",
    "project_for_label",
]

log = logging.getLogger(__name__)

TOKEN_CACHE_S = 5.0  # a revoked node token stops working within this many seconds

_token_lock = threading.Lock()
_token_cache: dict[str, tuple[float, Node]] = {}


def node_for_token(*, token: str) -> Node | None:
    """The node a bearer token belongs to (cached for a few seconds per process)."""
    digest = token_hash(token=token)
    now = time.monotonic()
    with _token_lock:
        hit = _token_cache.get(digest)
    if hit and now - hit[0] < TOKEN_CACHE_S:
        return hit[1]
    node = Node.objects.select_related("cluster").filter(token_hash=digest).first()
    with _token_lock:
        if node is None:
            _token_cache.pop(digest, None)
        else:
            if len(_token_cache) > 100_000:
                _token_cache.clear()
            _token_cache[digest] = (now, node)
    return node


def node_token_cache_clear() -> None:
    with _token_lock:
        _token_cache.clear()


GPU_CACHE_S = 30.0
LAST_SEEN_EVERY_S = 10.0

_cache_lock = threading.Lock()
# (node id, node created_at) -> (monotonic time, gpus signature, {uuid: gpu id})
_gpu_cache: dict[tuple, tuple[float, tuple, dict[str, int]]] = {}
# node id -> monotonic time its last_seen_at was last written
_node_seen_written: dict[tuple, float] = {}
# (allocation id, created_at) -> (monotonic time, GPU ids known linked)
_links_known: dict[tuple, tuple[float, frozenset[int]]] = {}
# (allocation id, created_at) -> last_ts this process wrote to AllocationSeen
_seen_written: dict[tuple, int] = {}
LINKS_CACHE_S = 30.0
SEEN_SLACK_S = 60


def ingest_caches_clear() -> None:
    """Forget every per-process cache of the ingest path (tests; after admin changes)."""
    with _cache_lock:
        _gpu_cache.clear()
        _node_seen_written.clear()
        _links_known.clear()
        _seen_written.clear()
    node_token_cache_clear()
    raw_partitions_forget()


def _ts_datetime(ts: int | float) -> datetime:
    return datetime.fromtimestamp(int(ts), tz=UTC)


def job_source(job: str) -> str:
    """The allocation source of a job label: its prefix (``slurm:123`` -> ``slurm``)."""
    prefix, sep, rest = job.partition(":")
    prefix = prefix.strip().lower()
    if sep and rest and prefix and len(prefix) <= 20 and prefix.replace("-", "").isalnum():
        return prefix
    return "agent"


def project_for_label(*, label: str | None, team_slug: str | None = None) -> Project:
    """The project a sample label names, created when unknown.

    Unknown projects land in ``team_slug`` when given (CSV imports), else in the team named by
    ``FLOPWATCH_UNASSIGNED_TEAM``: samples are never dropped for lack of a project, an admin
    moves the project to its team later.
    """
    slug = slugify(label or "")[:100] or settings.FLOPWATCH_UNASSIGNED_TEAM
    project = Project.objects.filter(slug=slug).first()
    if project is not None:
        return project
    team_slug = slugify(team_slug or "")[:50] or settings.FLOPWATCH_UNASSIGNED_TEAM
    team, _ = Team.objects.get_or_create(slug=team_slug, defaults={"name": team_slug})
    project, _ = Project.objects.get_or_create(
        slug=slug, defaults={"team": team, "name": label or slug}
    )
    return project


# --- GPUs -------------------------------------------------------------------------------------


def _gpus_upsert(*, node: Node, checked: CheckedBatch, now: datetime) -> dict[str, int]:
    """GPU ids by UUID for every GPU in the batch; creates and updates inventory rows.

    Raises IngestForbidden when a GPU belongs to another node and IngestError when a series
    names a GPU that is neither listed nor known.
    """
    signature = tuple(tuple(sorted(g.items())) for g in checked.gpus)
    series_uuids = {s.gpu for s in checked.series}
    key = (node.pk, node.created_at)
    with _cache_lock:
        cached = _gpu_cache.get(key)
    if (
        cached
        and time.monotonic() - cached[0] < GPU_CACHE_S
        and cached[1] == signature
        and series_uuids <= cached[2].keys()
    ):
        return cached[2]

    listed = {g["uuid"]: g for g in checked.gpus}
    wanted = set(listed) | series_uuids | {g["mig_parent"] for g in checked.gpus if g["mig_parent"]}
    existing = {gpu.uuid: gpu for gpu in Gpu.objects.filter(uuid__in=wanted)}
    foreign = sorted(u for u, gpu in existing.items() if gpu.node_id != node.pk)
    if foreign:
        raise IngestForbidden(f"GPU {foreign[0]} belongs to another node")
    unknown = [
        (i, s.gpu)
        for i, s in enumerate(checked.series)
        if s.gpu not in listed and s.gpu not in existing
    ]
    if unknown:
        raise IngestError(
            [
                (f"series[{checked.series[i].path_index}].gpu", f"unknown GPU {u}; list it in gpus")
                for i, u in unknown
            ]
        )
    # Parents first, so MIG instances can point at them.
    ordered = sorted(listed.values(), key=lambda g: g["mig_parent"] is not None)
    next_index = None  # for new GPUs reported without an index (CSV imports)
    for g in ordered:
        parent_id = None
        if g["mig_parent"]:
            parent = existing.get(g["mig_parent"])
            parent_id = parent.pk if parent and parent.node_id == node.pk else None
        profile = g["mig_profile"] if (parent_id or g["mig_profile"]) else ""
        if parent_id and not profile:
            profile = "unknown"
        gpu = existing.get(g["uuid"])
        index = g["index"]
        if index is None and gpu is not None:
            index = gpu.index
        elif index is None:
            if next_index is None:
                next_index = Gpu.objects.filter(node=node, mig_parent__isnull=True).count()
            index, next_index = next_index, next_index + 1
        fields = {
            "index": index,
            "model_name": g["model"] or (gpu.model_name if gpu else "") or "unknown",
            "mem_total_mib": g["mem_total_mib"]
            if g["mem_total_mib"] is not None
            else (gpu.mem_total_mib if gpu else None),
            "mig_parent_id": parent_id,
            "mig_profile": profile,
        }
        if gpu is None:
            try:
                with transaction.atomic():
                    gpu = Gpu.objects.create(
                        uuid=g["uuid"], node=node, first_seen_at=now, last_seen_at=now, **fields
                    )
            except IntegrityError:  # created by a concurrent request
                gpu = Gpu.objects.get(uuid=g["uuid"])
                if gpu.node_id != node.pk:
                    raise IngestForbidden(f"GPU {g['uuid']} belongs to another node") from None
            existing[g["uuid"]] = gpu
        elif any(getattr(gpu, k) != v for k, v in fields.items()):
            for k, v in fields.items():
                setattr(gpu, k, v)
            gpu.save(update_fields=[*fields.keys()])
    ids = {u: gpu.pk for u, gpu in existing.items() if gpu.node_id == node.pk}
    with _cache_lock:
        _gpu_cache[key] = (time.monotonic(), signature, ids)
    return ids


def _node_seen(*, node: Node, checked: CheckedBatch, gpu_ids: list[int], now: datetime) -> None:
    """Update the node's and its GPUs' last-seen (at most every few seconds per node)."""
    interval = round(checked.interval_s) if checked.interval_s else None
    changes: dict[str, Any] = {}
    if checked.agent_version and checked.agent_version != node.agent_version:
        changes["agent_version"] = checked.agent_version
    if checked.agent_source and checked.agent_source != node.agent_source:
        changes["agent_source"] = checked.agent_source
    if interval and interval >= 1 and interval != node.sample_interval_s:
        changes["sample_interval_s"] = interval
    key = (node.pk, node.created_at)
    with _cache_lock:
        written = _node_seen_written.get(key, 0.0)
    if not changes and time.monotonic() - written < LAST_SEEN_EVERY_S:
        return
    Node.objects.filter(pk=node.pk).update(last_seen_at=now, **changes)
    for k, v in changes.items():
        setattr(node, k, v)
    node.last_seen_at = now
    if gpu_ids:
        Gpu.objects.filter(pk__in=gpu_ids).update(last_seen_at=now)
    with _cache_lock:
        _node_seen_written[key] = time.monotonic()
    if checked.stats and checked.stats.get("dropped"):
        log.warning("node %s agent reports %s dropped samples", node.hostname, checked.stats)


# --- Allocations ------------------------------------------------------------------------------


@dataclass
class _JobSpan:
    alloc: dict[str, str]
    low: int
    high: int
    gpu_ids: set[int]


def _allocations_attribute(*, spans: dict[str, _JobSpan], team_by_label: bool = False) -> None:
    """Find or create the allocation of every job, extend it, link its GPUs, note it seen."""
    keys = {job: (job_source(job), job) for job in spans}
    found = {
        (a.source, a.external_id): a
        for a in Allocation.objects.select_related("seen").filter(
            external_id__in=[k[1] for k in keys.values()],
            source__in={k[0] for k in keys.values()},
        )
    }
    allocations: dict[str, Allocation] = {}
    for job, span in sorted(spans.items()):
        source, external_id = keys[job]
        allocation = found.get((source, external_id))
        start = _ts_datetime(span.low)
        if allocation is None:
            project = project_for_label(
                label=span.alloc.get("project"),
                team_slug=span.alloc.get("team") if team_by_label else None,
            )
            allocation, created = Allocation.objects.get_or_create(
                source=source,
                external_id=external_id,
                defaults={
                    "project": project,
                    "user_name": span.alloc.get("user", "")[:150],
                    "start": start,
                },
            )
            if created:
                allocations[job] = allocation
                continue
        if start < allocation.start:
            old = allocation.start
            Allocation.objects.filter(pk=allocation.pk).update(start=start)
            allocation.start = start
            rollup_pending_mark_range(
                gpu_ids=list(allocation.gpus.values_list("pk", flat=True)),
                start_ts=span.low,
                end_ts=int(old.timestamp()),
            )
        allocations[job] = allocation

    # GPUs of each allocation: link the new ones and mark the allocation's span for them.
    # Links known to exist are cached briefly per process (links are only ever added).
    now_m = time.monotonic()
    with _cache_lock:
        known = {
            job: _links_known.get((a.pk, a.created_at), (0.0, frozenset()))
            for job, a in allocations.items()
        }
    unknown_jobs = [
        job
        for job, a in allocations.items()
        if now_m - known[job][0] >= LINKS_CACHE_S or not spans[job].gpu_ids <= known[job][1]
    ]
    linked: dict[int, set[int]] = {}
    if unknown_jobs:
        for alloc_id, gpu_id in AllocationGpu.objects.filter(
            allocation_id__in=[allocations[j].pk for j in unknown_jobs]
        ).values_list("allocation_id", "gpu_id"):
            linked.setdefault(alloc_id, set()).add(gpu_id)
    new_links = []
    for job in unknown_jobs:
        allocation = allocations[job]
        have = linked.get(allocation.pk, set())
        new = sorted(spans[job].gpu_ids - have)
        with _cache_lock:
            _links_known[(allocation.pk, allocation.created_at)] = (
                now_m,
                frozenset(have | spans[job].gpu_ids),
            )
        if not new:
            continue
        new_links += [AllocationGpu(allocation_id=allocation.pk, gpu_id=g) for g in new]
        end_ts = int(allocation.end.timestamp()) if allocation.end else spans[job].high
        rollup_pending_mark_range(
            gpu_ids=new, start_ts=int(allocation.start.timestamp()), end_ts=end_ts
        )
    if new_links:
        AllocationGpu.objects.bulk_create(new_links, ignore_conflicts=True)

    # Re-open what the grace period closed too early. ``seen`` came with the select above
    # (a new allocation has none; asking it would cost a query).
    found_ids = {a.pk for a in found.values()}

    def seen_of(allocation: Allocation) -> AllocationSeen | None:
        return getattr(allocation, "seen", None) if allocation.pk in found_ids else None

    for job, allocation in allocations.items():
        span = spans[job]
        seen = seen_of(allocation)
        if allocation.end is None or seen is None or not seen.closed_by_grace:
            continue
        end_ts = int(allocation.end.timestamp())
        if span.high > end_ts:
            Allocation.objects.filter(pk=allocation.pk).update(end=None)
            AllocationSeen.objects.filter(pk=allocation.pk).update(closed_by_grace=False)
            allocation.end = None
            rollup_pending_mark_range(
                gpu_ids=list(allocation.gpus.values_list("pk", flat=True)),
                start_ts=end_ts,
                end_ts=span.high,
            )

    # Last seen: written when it moved on by more than a few intervals (the grace period is
    # minutes), so a steady stream of batches does not rewrite the row every time.
    slack = min(SEEN_SLACK_S, settings.FLOPWATCH_ALLOCATION_GRACE_S // 4)
    rows = []
    for job, allocation in allocations.items():
        high = spans[job].high
        key = (allocation.pk, allocation.created_at)
        seen = seen_of(allocation)
        with _cache_lock:
            stored = max(_seen_written.get(key, -1), seen.last_ts if seen else -1)
        if stored < 0 or high > stored + slack:
            rows.append((allocation.pk, high))
            with _cache_lock:
                _seen_written[key] = max(high, stored)
    rows.sort()
    if rows:
        greatest = "GREATEST" if connection.vendor == "postgresql" else "MAX"
        table = AllocationSeen._meta.db_table
        values = ", ".join(["(%s, %s, FALSE)"] * len(rows))
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (allocation_id, last_ts, closed_by_grace) VALUES {values} "  # noqa: S608
                f"ON CONFLICT (allocation_id) DO UPDATE SET last_ts = "
                f"{greatest}({table}.last_ts, excluded.last_ts)",
                [v for row in rows for v in row],
            )


# --- Samples ----------------------------------------------------------------------------------


def _buckets_mark(*, gpu_ids: np.ndarray, ts: np.ndarray, interval_s: float) -> None:
    """Mark the 5-minute buckets the samples fall in, and those their time spills into."""
    spill = int(2 * interval_s)
    buckets = np.concatenate([ts - ts % BUCKET_S, (ts + spill) - (ts + spill) % BUCKET_S])
    ids = np.concatenate([gpu_ids, gpu_ids])
    keys = np.unique(ids * (1 << 34) + buckets)
    gpu_col, bucket_col = (keys >> 34).tolist(), (keys & ((1 << 34) - 1)).tolist()
    if connection.vendor != "postgresql":
        rollup_pending_mark(pairs=zip(gpu_col, bucket_col, strict=True))
        return
    # The same rows as rollup_pending_mark, as one statement with two array parameters:
    # on the hot path the ORM's per-row objects and SQL cost more than the insert itself.
    # A bucket already marked gets the newer marked_at, as there: a rollup that claimed the
    # mark before these samples were committed then keeps it for the next run instead of
    # releasing it (DO NOTHING lost the last push into a bucket that a tick was rolling up).
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {RollupPending._meta.db_table} (gpu_id, bucket, marked_at) "  # noqa: S608
            "SELECT g, b, now() FROM unnest(%s::bigint[], %s::bigint[]) AS t(g, b) "
            "ON CONFLICT (gpu_id, bucket) DO UPDATE SET marked_at = excluded.marked_at",
            [gpu_col, bucket_col],
        )


def gpu_samples_ingest(
    *, node: Node, batch: Any, live: bool = True, now: datetime | None = None, **options: Any
) -> IngestResult:
    """Check a contract batch and store it whole, or raise and store nothing.

    Raises :class:`IngestError` (400), :class:`IngestForbidden` (403) or
    ``IngestTooLarge`` (413). ``live=False`` imports history older than the live window.
    Samples are keyed by (GPU, ts): the first value stored wins, the rest count as duplicates.
    """
    now = now or datetime.now(tz=UTC)
    checked = batch_check(
        batch=batch,
        now_ts=int(now.timestamp()),
        live=live,
        max_samples=options.get("max_samples", settings.FLOPWATCH_INGEST_MAX_SAMPLES),
        max_past_s=settings.FLOPWATCH_INGEST_MAX_PAST_S,
        max_future_s=settings.FLOPWATCH_INGEST_MAX_FUTURE_S,
    )
    if checked.node != node.hostname:
        raise IngestForbidden(f"this token is for node {node.hostname}, not {checked.node}")
    if checked.samples:
        raw_partitions_ensure(start_ts=int(checked.ts.min()), end_ts=int(checked.ts.max()))
        raw_stage_prepare()
    try:
        return _store(node=node, checked=checked, now=now, options=options)
    except IntegrityError:
        # Another request stored some of these keys between our check and our COPY, or a
        # cached GPU id was deleted meanwhile: everything was rolled back; forget the caches
        # and store once more through the always-safe staging path.
        ingest_caches_clear()
        if checked.samples:
            raw_partitions_ensure(start_ts=int(checked.ts.min()), end_ts=int(checked.ts.max()))
            raw_stage_prepare()
        return _store(node=node, checked=checked, now=now, options={**options, "direct": False})


@transaction.atomic
def _store(*, node: Node, checked: CheckedBatch, now: datetime, options: dict) -> IngestResult:
    gpu_by_uuid = _gpus_upsert(node=node, checked=checked, now=now)
    series_gpu = np.array([gpu_by_uuid[s.gpu] for s in checked.series], dtype=np.int64)
    _node_seen(node=node, checked=checked, gpu_ids=sorted(set(series_gpu.tolist())), now=now)
    if not checked.samples:
        return IngestResult(accepted=0, duplicates=0)

    gpu_ids = series_gpu[checked.series_index]
    ts = checked.ts
    keys = gpu_ids * (1 << 34) + ts
    _, first = np.unique(keys, return_index=True)
    if len(first) < len(keys):
        first.sort()
        gpu_ids, ts = gpu_ids[first], ts[first]
        values = {k: v[first] for k, v in checked.values.items()}
    else:
        values = checked.values
    inserted = raw_samples_store(
        gpu_ids=gpu_ids, ts=ts, values=values, direct=options.get("direct", True)
    )
    interval = checked.interval_s or node.sample_interval_s or settings.FLOPWATCH_DEFAULT_INTERVAL_S
    _buckets_mark(gpu_ids=gpu_ids, ts=ts, interval_s=interval)

    spans: dict[str, _JobSpan] = {}
    for i, s in enumerate(checked.series):
        if not s.alloc or s.stop == s.start:
            continue
        low, high = int(checked.ts[s.start]), int(checked.ts[s.stop - 1])
        span = spans.get(s.alloc["job"])
        if span is None:
            spans[s.alloc["job"]] = _JobSpan(s.alloc, low, high, {int(series_gpu[i])})
        else:
            span.low, span.high = min(span.low, low), max(span.high, high)
            span.gpu_ids.add(int(series_gpu[i]))
    if spans:
        _allocations_attribute(spans=spans, team_by_label=options.get("team_by_label", False))
    return IngestResult(accepted=inserted, duplicates=checked.samples - inserted)


def samples_csv_import(*, path: str, cluster: str = "imported", **kwargs: Any):
    """Import a wide samples CSV (``manage.py import_samples``); see
    :func:`apps.telemetry.ingest_csv.samples_csv_import`."""
    from apps.telemetry.ingest_csv import samples_csv_import as run

    return run(path=path, cluster=cluster, **kwargs)
