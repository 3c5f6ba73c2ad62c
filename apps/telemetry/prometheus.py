"""Import from a Prometheus that scrapes NVIDIA dcgm-exporter (DESIGN.md, ``import_prometheus``).

Most fleets already run dcgm-exporter scraped by Prometheus; this pulls their GPU series with
range queries (prometheus-api-client) and stores them like agent data: each chunk of time is
turned into contract batches per node and handed to
:func:`apps.telemetry.services.gpu_samples_ingest` (``live=False``), so the same validation,
idempotent (GPU, ts) storage, attribution and rollups apply.

How the series are read:
* One query per metric, ``avg by (<identity labels>) (avg_over_time(M{sel}[step]))``,
  evaluated at multiples of the step. The timestamps are therefore aligned to the step (a
  re-import of any overlapping range hits the same (GPU, ts) keys and changes nothing), and a
  point stands for the samples of the step that ends there (several scrapes per step are
  averaged; a step without a scrape has no point — never a stale value repeated).
* Queries are split in chunks of at most ``MAX_POINTS`` evaluation points (Prometheus refuses
  more than 11,000 points per series); every metric of a chunk is fetched before anything of it
  is written, so an unreachable server leaves nothing half-imported.
* GPUs are identified by UUID whatever the exporter version calls the label (``UUID``/``uuid``,
  ``Hostname``/``hostname``, ``modelName``); a MIG instance is ``<parent UUID>/gi<GPU_I_ID>``
  with its parent and ``GPU_I_PROFILE``, exactly as the agent's dcgm source names it.
* A GPU a pod holds (``pod``/``namespace`` labels) belongs to the job ``k8s:<ns>/<pod>`` (the
  agent's Kubernetes attribution); ``hpc_job`` (dcgm-exporter's HPC job mapping, fed by the
  Slurm prolog) gives ``slurm:<id>``. The project is the cluster's ``project_label`` value, else
  ``namespace_projects[namespace]``, else the namespace. Empty pod labels mean no allocation.

A GPU fed by both an agent and Prometheus: both kinds of samples land in the same per-GPU raw
store keyed by (GPU, ts); the rollups let each sample stand only until the next sample of that
GPU (capped at twice the node's interval), so interleaved samples share the time and observed
GPU-hours are never counted twice. Such a node keeps its agent's interval and source (the
import sends them only for nodes without an agent).
"""

from __future__ import annotations

import ast
import itertools
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import orjson
import requests
from django.conf import settings
from django.db.models import Q
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from urllib3.util.retry import Retry

from apps.fleet.models import Cluster, Gpu, Node
from apps.fleet.services import node_get_or_create

log = logging.getLogger(__name__)

# Prometheus refuses a range query with more than 11,000 points per series
# ("exceeded maximum resolution of 11,000 points per timeseries").
MAX_POINTS = 11_000
DEFAULT_CHUNK_POINTS = 10_000
# Points per query (one metric of a chunk): a chunk's seven answers are held in memory at once
# as parsed JSON (~150 bytes a point), so long ranges over many GPUs get shorter chunks. The
# width is the number of GPUs answering; before the first answer it is the GPUs the cluster
# already has, or unknown: then the first chunk is a short probe.
CHUNK_POINT_BUDGET = 200_000
PROBE_POINTS = 360

# Contract field -> dcgm-exporter metric. FB_FREE is not a sample field: the GPU's memory
# total is used + free.
METRICS: dict[str, str] = {
    "util_pct": "DCGM_FI_DEV_GPU_UTIL",
    "sm_active": "DCGM_FI_PROF_SM_ACTIVE",
    "gr_engine_active": "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
    "mem_used_mib": "DCGM_FI_DEV_FB_USED",
    "fb_free_mib": "DCGM_FI_DEV_FB_FREE",
    "power_w": "DCGM_FI_DEV_POWER_USAGE",
    "temp_c": "DCGM_FI_DEV_GPU_TEMP",
}
SAMPLE_FIELDS = ("util_pct", "sm_active", "gr_engine_active", "mem_used_mib", "power_w", "temp_c")
# Accepted ranges (the ingest contract's); a value outside is dropped (counted), not the batch.
RANGES: dict[str, tuple[float, float]] = {
    "util_pct": (0.0, 100.0),
    "sm_active": (0.0, 1.0),
    "gr_engine_active": (0.0, 1.0),
    "mem_used_mib": (0.0, math.inf),
    "fb_free_mib": (0.0, math.inf),
    "power_w": (0.0, math.inf),
    "temp_c": (-100.0, 200.0),
}
# DCGM's "blank" sentinels (DCGM_FP64_BLANK, DCGM_INT32/64_BLANK and above): no value.
DCGM_BLANK = 2147483632.0
# Labels that identify a GPU, its node and its holder, in every spelling seen across
# dcgm-exporter versions (absent labels are harmless in ``by``).
IDENTITY_LABELS = (
    "UUID",
    "uuid",
    "Hostname",
    "hostname",
    "instance",
    "modelName",
    "model_name",
    "DCGM_FI_DEV_NAME",
    "gpu",
    "GPU_I_ID",
    "GPU_I_PROFILE",
    "pod",
    "namespace",
    "container",
    "pod_name",
    "pod_namespace",
    "hpc_job",
)
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
DURATION_S = {
    "ms": 0.001,
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86_400,
    "w": 7 * 86_400,
    "y": 365 * 86_400,
}


class PrometheusImportError(Exception):
    """The import cannot go on: bad configuration, or the server is unreachable or refuses."""


@dataclass(frozen=True)
class PrometheusSource:
    """Where to read and how to map what is read: one cluster's Prometheus settings."""

    url: str
    cluster_slug: str = "prometheus"
    username: str = ""
    password: str = ""
    bearer_token: str = ""
    verify_tls: bool = True
    selector: str = ""
    namespace_projects: Mapping[str, str] = field(default_factory=dict)
    project_label: str = ""
    timeout_s: float | None = None  # None: FLOPWATCH_PROMETHEUS_TIMEOUT_S
    retries: int | None = None  # None: FLOPWATCH_PROMETHEUS_RETRIES

    @classmethod
    def for_cluster(cls, cluster: Cluster) -> PrometheusSource:
        return cls(
            url=cluster.prometheus_url,
            cluster_slug=cluster.slug,
            username=cluster.prometheus_username,
            password=cluster.prometheus_password,
            bearer_token=cluster.prometheus_bearer_token,
            verify_tls=cluster.prometheus_verify_tls,
            selector=cluster.prometheus_selector,
            namespace_projects=cluster.namespace_projects or {},
            project_label=cluster.project_label,
        )


@dataclass
class ImportResult:
    """What an import amounted to. Samples count one GPU at one timestamp."""

    samples: int = 0  # read from Prometheus (after merging the metrics)
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0  # samples of node batches the ingest refused
    invalid_values: int = 0  # values outside the contract's ranges, dropped
    queries: int = 0
    chunks: int = 0
    gpus: set[str] = field(default_factory=set)
    nodes: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    last_ts: int | None = None  # the last evaluation time imported (inclusive)


# --- Input checks -----------------------------------------------------------------------------


def duration_parse(text: str) -> int:
    """Seconds of a Prometheus duration (``30s``, ``1m30s``, ``2h``) or a plain number."""
    text = (text or "").strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
    elif text and DURATION.sub("", text) == "":
        seconds = sum(int(n) * DURATION_S[u] for n, u in DURATION.findall(text))
    else:
        raise PrometheusImportError(f"{text!r} is not a duration (e.g. 30s, 1m, 2h)")
    if seconds < 1 or seconds != int(seconds):
        raise PrometheusImportError(f"{text!r}: the step must be a whole number of seconds >= 1")
    return int(seconds)


def source_check(source: PrometheusSource) -> None:
    """Refuse a source that cannot work, with a message that says why."""
    if not source.url.startswith(("http://", "https://")):
        raise PrometheusImportError(
            f"Prometheus URL must start with http:// or https://: {source.url!r}"
        )
    if source.project_label and not LABEL_NAME.match(source.project_label):
        raise PrometheusImportError(f"project label {source.project_label!r} is not a label name")
    if any(c in source.selector for c in "{}"):
        raise PrometheusImportError(
            f"selector {source.selector!r}: give label matchers only, without braces "
            '(e.g. cluster="east")'
        )
    if not isinstance(source.namespace_projects, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in source.namespace_projects.items()
    ):
        raise PrometheusImportError("namespace_projects must map namespace names to project slugs")
    if source.username and source.bearer_token:
        raise PrometheusImportError("give basic auth or a bearer token, not both")


# --- Client -----------------------------------------------------------------------------------


def _client(source: PrometheusSource) -> PrometheusConnect:
    retries = settings.FLOPWATCH_PROMETHEUS_RETRIES if source.retries is None else source.retries
    timeout = (
        settings.FLOPWATCH_PROMETHEUS_TIMEOUT_S if source.timeout_s is None else source.timeout_s
    )
    # Retried: connection failures, timeouts and the statuses of an overloaded or restarting
    # server. Not retried: 4xx answers to the query itself (retrying changes nothing).
    # raise_on_status=False hands back the last answer, so its body makes the error message.
    retry = Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        backoff_factor=0.5,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=None,
        raise_on_status=False,
        respect_retry_after_header=True,
    )
    headers = {"Authorization": f"Bearer {source.bearer_token}"} if source.bearer_token else None
    auth = (source.username, source.password) if source.username else None
    return PrometheusConnect(
        url=source.url.rstrip("/"),
        headers=headers,
        auth=auth,
        disable_ssl=not source.verify_tls,
        retry=retry,
        timeout=timeout,
    )


def _server_message(exc: PrometheusApiClientException) -> str:
    """``HTTP 400: <Prometheus' error text>`` from the client's exception."""
    text = str(exc)
    match = re.match(r"HTTP Status Code (\d+) \((b.*)\)$", text, re.DOTALL)
    if not match:
        return text
    status, body = match.group(1), match.group(2)
    try:
        raw = ast.literal_eval(body)
    except (ValueError, SyntaxError):
        raw = body.encode()
    try:
        message = orjson.loads(raw).get("error") or raw.decode("utf-8", "replace")
    except (orjson.JSONDecodeError, AttributeError):
        message = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return f"HTTP {status}: {message.strip()[:500]}"


def _query_range(
    client: PrometheusConnect,
    *,
    source: PrometheusSource,
    query: str,
    start: int,
    end: int,
    step: int,
) -> list[dict]:
    try:
        return client.custom_query_range(
            query,
            start_time=datetime.fromtimestamp(start, tz=UTC),
            end_time=datetime.fromtimestamp(end, tz=UTC),
            step=f"{step}s",
        )
    except PrometheusApiClientException as exc:
        raise PrometheusImportError(
            f"Prometheus at {source.url} refused the query: {_server_message(exc)}"
        ) from None
    except (requests.exceptions.JSONDecodeError, KeyError, TypeError) as exc:
        # A body that is not the query API's JSON (a login page, a proxy's error page).
        raise PrometheusImportError(
            f"Prometheus at {source.url} answered something that is not its query API: {exc}"
        ) from None
    except requests.RequestException as exc:
        timeout = client._timeout
        if "timed out" in str(exc).lower() or isinstance(exc, requests.Timeout):
            raise PrometheusImportError(
                f"Prometheus at {source.url} did not answer within {timeout:g} s"
            ) from None
        reason = str(exc)
        if "refused" in reason.lower():
            reason = "connection refused"
        raise PrometheusImportError(f"cannot reach Prometheus at {source.url}: {reason}") from None


def metric_query(*, metric: str, source: PrometheusSource, step: int) -> str:
    labels = list(IDENTITY_LABELS)
    if source.project_label and source.project_label not in labels:
        labels.append(source.project_label)
    selector = f"{{{source.selector}}}" if source.selector else ""
    return f"avg by ({', '.join(labels)}) (avg_over_time({metric}{selector}[{step}s]))"


# --- Turning series into batches --------------------------------------------------------------


def _label(labels: Mapping[str, str], *names: str) -> str:
    for name in names:
        value = labels.get(name)
        if value:
            return value
    return ""


@dataclass(frozen=True)
class _Device:
    uuid: str
    parent: str | None
    profile: str
    index: int | None
    model: str
    hostname: str


def _device(labels: Mapping[str, str]) -> _Device | None:
    uuid = _label(labels, "UUID", "uuid")
    if not uuid:
        return None  # label-less (dummy) families cannot be tied to a GPU
    gi = _label(labels, "GPU_I_ID", "gpu_i_id")
    try:
        index = int(_label(labels, "gpu"))
    except ValueError:
        index = None
    hostname = _label(labels, "Hostname", "hostname")
    if not hostname:
        instance = _label(labels, "instance")
        hostname = instance.rsplit(":", 1)[0] if ":" in instance else instance
    return _Device(
        uuid=f"{uuid}/gi{gi}" if gi else uuid,
        parent=uuid if gi else None,
        profile=_label(labels, "GPU_I_PROFILE", "gpu_i_profile") if gi else "",
        index=index,
        model=_label(labels, "modelName", "model_name", "DCGM_FI_DEV_NAME"),
        hostname=hostname[:253] or "unknown",
    )


def _alloc(labels: Mapping[str, str], source: PrometheusSource) -> dict[str, str] | None:
    pod = _label(labels, "pod", "pod_name")
    namespace = _label(labels, "namespace", "pod_namespace")
    hpc_job = _label(labels, "hpc_job")
    if pod:
        job = f"k8s:{namespace}/{pod}" if namespace else f"k8s:{pod}"
    elif hpc_job:
        job = f"slurm:{hpc_job}"
    else:
        return None  # no pod holds this GPU: unallocated
    project = (
        (labels.get(source.project_label) if source.project_label else "")
        or source.namespace_projects.get(namespace, "")
        or namespace
    )
    alloc = {"job": job[:255]}
    if project:
        alloc["project"] = project[:100]
    return alloc


def _alloc_rank(alloc: dict[str, str] | None) -> tuple:
    # When two holders report the same GPU at the same step (a pod ending as the next one
    # starts), the same one must win every time for re-imports to be idempotent.
    return (
        alloc is not None,
        alloc["job"] if alloc else "",
        alloc.get("project", "") if alloc else "",
    )


@dataclass
class _Collected:
    """The values of one chunk: per device, per holder, per field, (ts, values) arrays."""

    devices: dict[str, _Device] = field(default_factory=dict)
    data: dict[str, dict[tuple, list[tuple[str, np.ndarray, np.ndarray]]]] = field(
        default_factory=dict
    )
    allocs: dict[tuple, dict[str, str] | None] = field(default_factory=dict)


def _collect(
    results: dict[str, list[dict]], source: PrometheusSource, result: ImportResult
) -> _Collected:
    out = _Collected()
    for name, series_list in results.items():
        low, high = RANGES[name]
        for series in series_list:
            labels = series.get("metric") or {}
            device = _device(labels)
            values = series.get("values") or []
            if device is None or not values:
                continue
            out.devices.setdefault(device.uuid, device)
            alloc = _alloc(labels, source)
            key = tuple(sorted(alloc.items())) if alloc else ()
            out.allocs[key] = alloc
            arr = np.asarray(values, dtype=object)
            ts = arr[:, 0].astype(np.float64).astype(np.int64)
            vals = arr[:, 1].astype(str).astype(np.float64)
            vals[~np.isfinite(vals) | (np.abs(vals) >= DCGM_BLANK)] = np.nan
            with np.errstate(invalid="ignore"):
                bad = (vals < low) | (vals > high)
            if bad.any():
                result.invalid_values += int(bad.sum())
                vals[bad] = np.nan
            out.data.setdefault(device.uuid, {}).setdefault(key, []).append((name, ts, vals))
    return out


def _device_series(
    device: _Device, holders: dict[tuple, list], allocs: dict[tuple, dict | None]
) -> tuple[list[dict], float | None, int]:
    """Series entries for one device (a run per holder), its memory total and sample count."""
    all_ts = np.unique(np.concatenate([ts for parts in holders.values() for _, ts, _ in parts]))
    n = len(all_ts)
    order = sorted(holders, key=lambda k: _alloc_rank(allocs[k]))  # least preferred first
    owner = np.full(n, -1, dtype=np.int64)
    columns = {name: np.full(n, np.nan) for name in (*SAMPLE_FIELDS, "fb_free_mib")}
    for rank, key in enumerate(order):
        for name, ts, vals in holders[key]:
            idx = np.searchsorted(all_ts, ts)
            have = ~np.isnan(vals)
            columns[name][idx[have]] = vals[have]  # a more preferred holder overwrites
            if name in SAMPLE_FIELDS:
                owner[idx[have]] = rank
    keep = owner >= 0  # a step with no sample field at all (only FB_FREE, or all invalid)
    all_ts, owner = all_ts[keep], owner[keep]
    columns = {k: v[keep] for k, v in columns.items()}
    total = columns["mem_used_mib"] + columns["fb_free_mib"]
    total = total[~np.isnan(total)]
    mem_total = float(total[-1]) if len(total) else None
    entries = []
    bounds = [*np.flatnonzero(np.diff(owner, prepend=-2) != 0).tolist(), len(all_ts)]
    for a, b in itertools.pairwise(bounds):
        entry: dict = {
            "gpu": device.uuid,
            "alloc": allocs[order[int(owner[a])]],
            "ts": all_ts[a:b].tolist(),
        }
        for name in SAMPLE_FIELDS:
            vals = columns[name][a:b]
            if not np.isnan(vals).all():
                entry[name] = [None if v != v else v for v in vals.tolist()]
        entries.append(entry)
    return entries, mem_total, len(all_ts)


def _gpu_payload(device: _Device, mem_total: float | None) -> dict:
    return {
        "uuid": device.uuid,
        "index": device.index,
        "model": device.model or None,
        "mem_total_mib": int(mem_total) if mem_total is not None else None,
        "mig_parent": device.parent,
        "mig_profile": device.profile or None,
    }


def _ingest_chunk(
    collected: _Collected,
    *,
    source: PrometheusSource,
    step: int,
    now: datetime,
    result: ImportResult,
    nodes: dict[str, Node],
) -> None:
    from apps.telemetry.ingest import IngestError, IngestForbidden, IngestTooLarge
    from apps.telemetry.services import gpu_samples_ingest

    if not collected.data:
        return
    # A GPU already known stays on its node (the agent's hostname may differ from the
    # exporter's Hostname label, which is often the exporter pod's name).
    uuids = set(collected.devices) | {d.parent for d in collected.devices.values() if d.parent}
    known = dict(Gpu.objects.filter(uuid__in=uuids).values_list("uuid", "node__hostname"))
    by_node: dict[str, list[str]] = {}
    for uuid in sorted(collected.data):
        device = collected.devices[uuid]
        hostname = known.get(uuid) or known.get(device.parent or "") or device.hostname
        by_node.setdefault(hostname, []).append(uuid)
    for hostname, uuids_of_node in sorted(by_node.items()):
        node = nodes.get(hostname)
        if node is None:
            node, _ = node_get_or_create(hostname=hostname, cluster_slug=source.cluster_slug)
            nodes[hostname] = node
        gpus: dict[str, dict] = {}
        series: list[dict] = []
        count = 0
        ts_steps: list[np.ndarray] = []
        for uuid in uuids_of_node:
            device = collected.devices[uuid]
            entries, mem_total, n = _device_series(device, collected.data[uuid], collected.allocs)
            if not n:
                continue
            if device.parent and device.parent not in gpus:
                # The physical GPU, so the instance can point at it (capacity is per GPU).
                gpus[device.parent] = {
                    "uuid": device.parent,
                    "index": device.index,
                    "model": device.model or None,
                }
            gpus[uuid] = _gpu_payload(device, mem_total)
            series += entries
            count += n
            ts_all = np.concatenate([np.asarray(e["ts"]) for e in entries])
            ts_all.sort()
            ts_steps.append(np.diff(ts_all))
            result.gpus.add(uuid)
        if not series:
            continue
        diffs = np.concatenate(ts_steps) if ts_steps else np.empty(0)
        diffs = diffs[diffs > 0]
        # The real sampling interval (a scrape interval longer than the step leaves steps
        # without points): rollups cap each sample's time at twice it.
        interval = float(min(max(np.median(diffs), step), 86_400)) if len(diffs) else float(step)
        agent: dict = {}
        if not node.has_token and node.agent_source in ("", "prometheus"):
            agent = {"source": "prometheus", "interval_s": interval}
        batch = {"node": hostname, "agent": agent, "gpus": list(gpus.values()), "series": series}
        result.samples += count
        try:
            stored = gpu_samples_ingest(
                node=node, batch=batch, live=False, now=now, max_samples=count + 1
            )
        except (IngestError, IngestForbidden, IngestTooLarge) as exc:
            result.rejected += count
            result.errors.append(f"node {hostname}: {str(exc)[:300]}")
            log.warning("Prometheus import: node %s refused: %s", hostname, exc)
            continue
        result.accepted += stored.accepted
        result.duplicates += stored.duplicates
        result.nodes.add(hostname)


def _chunk_points(limit: int, width: int) -> int:
    """Evaluation times per chunk: at most ``limit``, fewer when many GPUs answer."""
    return max(1, min(limit, CHUNK_POINT_BUDGET // max(width, 1)))


def prometheus_range_import(
    *,
    source: PrometheusSource,
    start: datetime,
    end: datetime,
    step_s: int,
    progress: Callable[[int], None] | None = None,
    checkpoint: Callable[[int], None] | None = None,
    chunk_points: int = DEFAULT_CHUNK_POINTS,
    now: datetime | None = None,
) -> ImportResult:
    """Import the dcgm-exporter series of ``[start, end]`` at ``step_s`` into raw samples.

    Evaluation times are the multiples of ``step_s`` inside the range. ``progress`` is called
    with the number of evaluation times done after each chunk (a tqdm update); ``checkpoint``
    with the last evaluation time of each chunk once it is stored (the periodic import moves
    its watermark there). Raises :class:`PrometheusImportError` when the source is unusable or
    the server is unreachable or refuses; chunks stored before that stay stored (an import is
    idempotent, so running it again simply continues).
    """
    from apps.tenancy.services import allocations_close_stale

    source_check(source)
    if step_s < 1:
        raise PrometheusImportError("the step must be at least 1 s")
    if not 1 <= chunk_points <= MAX_POINTS:
        raise PrometheusImportError(f"chunk points must be 1..{MAX_POINTS}")
    now = now or datetime.now(tz=UTC)
    first, last = _evaluation_bounds(start=start, end=end, step_s=step_s)
    result = ImportResult()
    if last < first:
        return result
    client = _client(source)
    nodes: dict[str, Node] = {}
    known = Gpu.objects.filter(node__cluster__slug=source.cluster_slug).count()
    points = _chunk_points(chunk_points, known) if known else min(chunk_points, PROBE_POINTS)
    t = first
    try:
        while t <= last:
            chunk_end = min(last, t + (points - 1) * step_s)
            results: dict[str, list[dict]] = {}
            # Every metric of the chunk before any write: a failure leaves nothing half-done.
            for name, metric in METRICS.items():
                query = metric_query(metric=metric, source=source, step=step_s)
                results[name] = _query_range(
                    client, source=source, query=query, start=t, end=chunk_end, step=step_s
                )
                result.queries += 1
            collected = _collect(results, source, result)
            _ingest_chunk(
                collected, source=source, step=step_s, now=now, result=result, nodes=nodes
            )
            result.chunks += 1
            result.last_ts = chunk_end
            if checkpoint:
                checkpoint(chunk_end)
            if progress:
                progress((chunk_end - t) // step_s + 1)
            points = _chunk_points(chunk_points, len(collected.devices))
            t = chunk_end + step_s
    finally:
        client.close()
        if result.accepted:
            # History: jobs whose samples ended long ago are closed now rather than by the
            # next periodic run, so a rollup right after the import sees them whole.
            allocations_close_stale(now=now)
    return result


def _evaluation_bounds(*, start: datetime, end: datetime, step_s: int) -> tuple[int, int]:
    """The first and last multiples of the step inside ``[start, end]`` (last < first when
    there is none)."""
    first = -(-int(start.timestamp()) // step_s) * step_s  # ceil to the step
    last = int(end.timestamp()) // step_s * step_s
    return first, last


def prometheus_points_count(*, start: datetime, end: datetime, step_s: int) -> int:
    """Evaluation times of a range (a progress bar's total)."""
    first, last = _evaluation_bounds(start=start, end=end, step_s=step_s)
    return max(0, (last - first) // step_s + 1)


# --- The periodic import ----------------------------------------------------------------------


def cluster_prometheus_import(
    *, cluster: Cluster, now: datetime | None = None, chunk_points: int = DEFAULT_CHUNK_POINTS
) -> ImportResult:
    """Import what is new in the cluster's Prometheus since its watermark.

    Re-reads the last ``FLOPWATCH_PROMETHEUS_OVERLAP_S`` (scrapes that arrived late; what was
    already stored counts as duplicates), imports at most ``FLOPWATCH_PROMETHEUS_CATCHUP_S``
    per run, and moves the watermark after each stored chunk, never backwards. The outcome
    (the error, or none) is recorded on the cluster; an error is raised again for the caller.
    """
    now = now or datetime.now(tz=UTC)
    step = max(int(cluster.prometheus_step_s or 30), 1)
    now_ts = int(now.timestamp())
    if cluster.prometheus_watermark:
        start_ts = (
            int(cluster.prometheus_watermark.timestamp()) - settings.FLOPWATCH_PROMETHEUS_OVERLAP_S
        )
    else:
        start_ts = now_ts - settings.FLOPWATCH_PROMETHEUS_CATCHUP_S
    end_ts = min(now_ts, start_ts + settings.FLOPWATCH_PROMETHEUS_CATCHUP_S)

    def checkpoint(ts: int) -> None:
        moment = datetime.fromtimestamp(ts, tz=UTC)
        Cluster.objects.filter(pk=cluster.pk).filter(
            Q(prometheus_watermark__isnull=True) | Q(prometheus_watermark__lt=moment)
        ).update(prometheus_watermark=moment)

    try:
        result = prometheus_range_import(
            source=PrometheusSource.for_cluster(cluster),
            start=datetime.fromtimestamp(start_ts, tz=UTC),
            end=datetime.fromtimestamp(end_ts, tz=UTC),
            step_s=step,
            checkpoint=checkpoint,
            chunk_points=chunk_points,
            now=now,
        )
    except PrometheusImportError as exc:
        Cluster.objects.filter(pk=cluster.pk).update(
            prometheus_last_run_at=now, prometheus_last_error=str(exc)
        )
        raise
    Cluster.objects.filter(pk=cluster.pk).update(
        prometheus_last_run_at=now, prometheus_last_error="\n".join(result.errors[:20])
    )
    return result


def prometheus_import_all(*, now: datetime | None = None) -> dict[str, dict]:
    """Run :func:`cluster_prometheus_import` for every cluster with a Prometheus URL.

    One cluster's failure does not stop the others; the summary says what each did.
    """
    summary: dict[str, dict] = {}
    for cluster in Cluster.objects.exclude(prometheus_url="").order_by("slug"):
        try:
            result = cluster_prometheus_import(cluster=cluster, now=now)
        except PrometheusImportError as exc:
            log.warning("Prometheus import for cluster %s failed: %s", cluster.slug, exc)
            summary[cluster.slug] = {"error": str(exc)}
            continue
        summary[cluster.slug] = {
            "samples": result.samples,
            "accepted": result.accepted,
            "duplicates": result.duplicates,
            "rejected": result.rejected,
            "last_ts": result.last_ts,
            "errors": result.errors[:5],
        }
    return summary
