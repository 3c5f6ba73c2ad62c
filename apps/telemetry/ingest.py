"""Decoding and checking a sample batch (DESIGN.md, ``POST /api/v1/samples``), column-wise.

A batch is checked whole before anything is written: every error is collected with its
path (``series[3].util_pct[17]``) so an agent author sees all problems at once. Values are
checked a column at a time: the arrays of every series are joined into one list per field,
type-checked with one pass over the element types and range-checked with NumPy, so the cost
per sample is a few nanoseconds, not a Python loop per value.

Unknown fields: inside a ``series`` entry an unknown key is an error (a misspelt metric
would otherwise vanish silently); unknown keys at the top level and inside ``agent``,
``gpus[i]`` and ``alloc`` are ignored, so newer agents can add descriptive extras
(``processes``, ``notes``, ``stats``) without breaking older servers.
"""

from __future__ import annotations

import itertools
import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from apps.telemetry.storage import VALUE_FIELDS

MAX_ERRORS = 1000
READ_CHUNK = 64 * 1024

RATIO_FIELDS = ("sm_active", "sm_occupancy", "tensor_active", "dram_active", "gr_engine_active")
NON_NEGATIVE_FIELDS = ("mem_used_mib", "power_w", "sm_clock_mhz", "energy_mj")
SERIES_KEYS = frozenset(("gpu", "alloc", "ts", *VALUE_FIELDS))
_NUMBER_TYPES = frozenset((int, float, type(None)))
XID_MAX = 2**31 - 1
TEMP_RANGE = (-100.0, 200.0)


@dataclass(frozen=True)
class IngestResult:
    """What a stored batch amounted to, counted in samples (one GPU at one timestamp)."""

    accepted: int
    duplicates: int


class IngestError(Exception):
    """The batch is invalid; ``errors`` lists ``(path, message)`` for every problem found."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{p}: {m}" for p, m in errors[:5]))


class IngestTooLarge(Exception):
    """The body or the batch exceeds a limit (HTTP 413)."""


class IngestForbidden(Exception):
    """The batch names a node or GPU that is not the token's (HTTP 403)."""


@dataclass
class SeriesMeta:
    gpu: str
    alloc: dict[str, str] | None
    start: int  # offset of the entry's first sample in the flat columns
    stop: int
    path_index: int  # its index in the body's ``series`` list, for error paths


@dataclass
class CheckedBatch:
    """A valid batch as flat columns: sample i belongs to ``series[series_index[i]]``."""

    node: str
    agent_version: str
    agent_source: str
    interval_s: float | None
    stats: dict[str, Any] | None
    gpus: list[dict[str, Any]]
    series: list[SeriesMeta]
    series_index: np.ndarray
    ts: np.ndarray  # int64
    values: dict[str, np.ndarray] = field(default_factory=dict)  # float64, NaN = no value

    @property
    def samples(self) -> int:
        return len(self.ts)


# --- Body -------------------------------------------------------------------------------------


def body_read(*, stream, content_encoding: str | None, max_bytes: int) -> bytes:
    """Read the request body, inflating gzip incrementally, refusing more than ``max_bytes``.

    A gzip bomb is stopped as soon as its output passes the limit: at most ``max_bytes + 1``
    bytes are ever inflated. Raises :class:`IngestTooLarge` or :class:`IngestError`.
    """
    encoding = (content_encoding or "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip"):
        raise IngestError([("Content-Encoding", f"unsupported encoding {encoding!r}")])
    if encoding == "identity":
        data = stream.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise IngestTooLarge(f"body larger than {max_bytes} bytes")
        return data
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out: list[bytes] = []
    size = 0
    try:
        while not inflater.eof:
            chunk = stream.read(READ_CHUNK)
            if not chunk:
                break
            while chunk:
                piece = inflater.decompress(chunk, max_bytes + 1 - size)
                size += len(piece)
                out.append(piece)
                if size > max_bytes:
                    raise IngestTooLarge(f"decompressed body larger than {max_bytes} bytes")
                chunk = inflater.unconsumed_tail
                if inflater.eof:
                    break
    except zlib.error as exc:
        raise IngestError([("body", f"not valid gzip: {exc}")]) from None
    if not inflater.eof:
        raise IngestError([("body", "gzip stream is truncated")])
    return b"".join(out)


def body_parse(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise IngestError([("body", f"not valid JSON: {exc}")]) from None


# --- Checks -----------------------------------------------------------------------------------


class _Errors:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self.more = 0

    def add(self, path: str, message: str) -> None:
        if len(self.items) < MAX_ERRORS:
            self.items.append((path, message))
        else:
            self.more += 1

    def raise_if_any(self) -> None:
        if self.items:
            items = list(self.items)
            if self.more:
                items.append(("body", f"{self.more} more errors not listed"))
            raise IngestError(items)


# PostgreSQL text cannot hold a NUL character: a string with one is refused by name here
# rather than failing the whole request in the database.
_NUL = "\x00"
_NUL_ERROR = "must not contain NUL (\\u0000) characters"


def _req_str(
    errors: _Errors, obj: dict, key: str, where: str, *, max_len: int | None, message: str
) -> str | None:
    """``obj[key]`` when it is a non-blank string of at most ``max_len`` characters without a
    NUL; else None, with ``message`` (or the NUL error) at ``where``."""
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip() or (max_len and len(value) > max_len):
        errors.add(where, message)
        return None
    if _NUL in value:
        errors.add(where, _NUL_ERROR)
        return None
    return value


def _opt_str(errors: _Errors, obj: dict, key: str, path: str, *, max_len: int) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        errors.add(f"{path}.{key}", "must be a string or null")
        return None
    if len(value) > max_len:
        errors.add(f"{path}.{key}", f"longer than {max_len} characters")
        return None
    if _NUL in value:
        errors.add(f"{path}.{key}", _NUL_ERROR)
        return None
    return value


def _check_gpus(errors: _Errors, gpus: Any) -> list[dict[str, Any]]:
    if gpus is None:
        return []
    if not isinstance(gpus, list):
        errors.add("gpus", "must be a list")
        return []
    out = []
    for i, gpu in enumerate(gpus):
        path = f"gpus[{i}]"
        if not isinstance(gpu, dict):
            errors.add(path, "must be an object")
            continue
        uuid = _req_str(
            errors,
            gpu,
            "uuid",
            f"{path}.uuid",
            max_len=100,
            message="required: a non-empty string of at most 100 characters",
        )
        if uuid is None:
            continue
        index = gpu.get("index")
        if index is not None and (type(index) is not int or not 0 <= index <= 32767):
            errors.add(f"{path}.index", "must be an integer 0-32767 or absent")
        mem = gpu.get("mem_total_mib")
        if mem is not None and (type(mem) not in (int, float) or not 0 <= mem < 2**31):
            errors.add(f"{path}.mem_total_mib", "must be a non-negative number or null")
        model = _opt_str(errors, gpu, "model", path, max_len=200)
        parent = _opt_str(errors, gpu, "mig_parent", path, max_len=100)
        profile = _opt_str(errors, gpu, "mig_profile", path, max_len=50)
        out.append(
            {
                "uuid": uuid,
                "index": index if type(index) is int else None,  # None: keep / next free
                "model": model or "",
                "mem_total_mib": int(mem) if type(mem) in (int, float) else None,
                "mig_parent": parent or None,
                "mig_profile": profile or "",
            }
        )
    return out


def _check_alloc(errors: _Errors, alloc: Any, path: str) -> dict[str, str] | None:
    if alloc is None:
        return None
    if not isinstance(alloc, dict):
        errors.add(path, "must be an object or null")
        return None
    job = _req_str(
        errors,
        alloc,
        "job",
        f"{path}.job",
        max_len=255,
        message="required: a non-empty string of at most 255 characters",
    )
    if job is None:
        return None
    out = {"job": job.strip()}
    for key, max_len in (("project", 100), ("user", 150), ("team", 50)):
        value = _opt_str(errors, alloc, key, path, max_len=max_len)
        if value:
            out[key] = value.strip()
    return out


def _flat_path(series: list[SeriesMeta], name: str, flat_index: int, starts: np.ndarray) -> str:
    i = int(np.searchsorted(starts, flat_index, side="right")) - 1
    return f"series[{series[i].path_index}].{name}[{flat_index - series[i].start}]"


def batch_check(
    *,
    batch: Any,
    now_ts: int,
    live: bool,
    max_samples: int,
    max_past_s: int,
    max_future_s: int,
) -> CheckedBatch:
    """Check a decoded batch and return it as columns; raise on any error.

    Raises :class:`IngestTooLarge` for more than ``max_samples`` samples and
    :class:`IngestError` with every problem otherwise. ``live=False`` (history imports)
    lifts the lower bound of the timestamp window.
    """
    errors = _Errors()
    if not isinstance(batch, dict):
        raise IngestError([("body", "must be a JSON object")])
    node = (
        _req_str(
            errors, batch, "node", "node", max_len=None, message="required: the node's hostname"
        )
        or ""
    )
    agent = batch.get("agent") or {}
    version = source = ""
    interval_s = None
    stats = None
    if not isinstance(agent, dict):
        errors.add("agent", "must be an object")
    else:
        version = _opt_str(errors, agent, "version", "agent", max_len=50) or ""
        source = _opt_str(errors, agent, "source", "agent", max_len=20) or ""
        iv = agent.get("interval_s")
        if iv is not None:
            if type(iv) not in (int, float) or not (0 < iv <= 86_400):
                errors.add("agent.interval_s", "must be a number of seconds in (0, 86400]")
            else:
                interval_s = float(iv)
        if isinstance(agent.get("stats"), dict):
            stats = agent["stats"]
    batch_id = batch.get("batch_id")
    if batch_id is not None and not isinstance(batch_id, str):
        errors.add("batch_id", "must be a string")
    elif batch_id is not None and _NUL in batch_id:
        errors.add("batch_id", _NUL_ERROR)
    gpus = _check_gpus(errors, batch.get("gpus"))
    raw_series = batch.get("series")
    if not isinstance(raw_series, list):
        errors.add("series", "required: a list of series entries")
        raw_series = []

    # Size first: refuse an oversized batch before looking at its values.
    total = 0
    for entry in raw_series:
        if isinstance(entry, dict) and isinstance(entry.get("ts"), list):
            total += len(entry["ts"])
    if total > max_samples:
        raise IngestTooLarge(f"{total} samples in one batch; at most {max_samples}")

    series: list[SeriesMeta] = []
    ts_parts: list[list] = []
    columns: dict[str, list] = {name: [] for name in VALUE_FIELDS}
    present: set[str] = set()
    offset = 0
    for i, entry in enumerate(raw_series):
        path = f"series[{i}]"
        if not isinstance(entry, dict):
            errors.add(path, "must be an object")
            continue
        ok = True
        for key in entry:
            if key not in SERIES_KEYS:
                errors.add(f"{path}.{key}", "unknown field")
        # "" keeps its values checked; the batch is refused anyway.
        gpu = (
            _req_str(
                errors, entry, "gpu", f"{path}.gpu", max_len=100, message="required: the GPU's UUID"
            )
            or ""
        )
        alloc = _check_alloc(errors, entry.get("alloc"), f"{path}.alloc")
        ts = entry.get("ts")
        if not isinstance(ts, list):
            errors.add(f"{path}.ts", "required: a list of epoch seconds")
            continue
        n = len(ts)
        for name in VALUE_FIELDS:
            arr = entry.get(name)
            if arr is None:
                continue
            if not isinstance(arr, list):
                errors.add(f"{path}.{name}", "must be a list or null")
                ok = False
            elif len(arr) != n:
                errors.add(f"{path}.{name}", f"has {len(arr)} values; ts has {n}")
                ok = False
        if not ok:
            continue
        series.append(SeriesMeta(gpu=gpu, alloc=alloc, start=offset, stop=offset + n, path_index=i))
        ts_parts.append(ts)
        for name in VALUE_FIELDS:
            arr = entry.get(name)
            if arr is None:
                columns[name].append([None] * n)
            else:
                columns[name].append(arr)
                present.add(name)
        offset += n

    starts = np.array([s.start for s in series], dtype=np.int64)

    def paths(name: str, bad: np.ndarray, message: str) -> None:
        for flat_index in bad[: MAX_ERRORS - len(errors.items) + 1].tolist():
            errors.add(_flat_path(series, name, flat_index, starts), message)
        if len(bad) > MAX_ERRORS:
            errors.more += len(bad) - MAX_ERRORS

    def to_array(name: str, parts: list[list], *, nullable: bool) -> np.ndarray | None:
        flat = list(itertools.chain.from_iterable(parts)) if len(parts) != 1 else parts[0]
        types = set(map(type, flat))
        if not types <= _NUMBER_TYPES or (not nullable and type(None) in types):
            allowed = (int, float, type(None)) if nullable else (int, float)
            bad = [j for j, v in enumerate(flat) if type(v) not in allowed]
            paths(
                name,
                np.array(bad, dtype=np.int64),
                "must be a number" + (" or null" if nullable else ""),
            )
            return None
        try:
            arr = np.array(flat, dtype=np.float64)
        except (OverflowError, ValueError):  # integers beyond float range
            arr = np.array([math.nan if v is None else _clamp(v) for v in flat], dtype=np.float64)
        inf = np.isinf(arr)
        if inf.any():
            paths(name, np.flatnonzero(inf), "must be finite")
        return arr

    ts_arr = to_array("ts", ts_parts, nullable=False) if series else np.empty(0)
    values: dict[str, np.ndarray] = {}
    for name in VALUE_FIELDS:
        if name in present:
            arr = to_array(name, columns[name], nullable=True)
            if arr is not None:
                values[name] = arr

    if ts_arr is not None and len(ts_arr):
        ts_int = np.floor(ts_arr)
        low = now_ts - max_past_s if live else 0
        high = now_ts + max_future_s
        out = (ts_int < low) | (ts_int > high)
        if out.any():
            paths("ts", np.flatnonzero(out), f"outside the accepted window {low}..{high}")
        if len(ts_arr) > 1:
            step_ok = np.diff(ts_arr) > 0
            # The first sample of each entry has no predecessor in its own entry.
            boundaries = starts[1:] - 1
            step_ok[boundaries[boundaries >= 0]] = True
            bad = np.flatnonzero(~step_ok) + 1
            if len(bad):
                paths("ts", bad, "must be strictly greater than the previous timestamp")
    for name, arr in values.items():
        with np.errstate(invalid="ignore"):
            if name == "util_pct":
                bad = (arr < 0) | (arr > 100)
                message = "must be 0-100"
            elif name in RATIO_FIELDS:
                bad = (arr < 0) | (arr > 1)
                message = "must be 0-1"
            elif name in NON_NEGATIVE_FIELDS:
                bad = arr < 0
                message = "must be >= 0"
            elif name == "temp_c":
                bad = (arr < TEMP_RANGE[0]) | (arr > TEMP_RANGE[1])
                message = f"must be {TEMP_RANGE[0]:g}-{TEMP_RANGE[1]:g}"
            else:  # xid
                bad = (arr < 0) | (arr > XID_MAX) | (np.floor(arr) != arr)
                bad &= ~np.isnan(arr)
                message = f"must be an integer 0-{XID_MAX}"
        bad &= ~np.isinf(arr)  # already reported
        if bad.any():
            paths(name, np.flatnonzero(bad), message)
    errors.raise_if_any()

    counts = np.array([s.stop - s.start for s in series], dtype=np.int64)
    return CheckedBatch(
        node=node,
        agent_version=version,
        agent_source=source,
        interval_s=interval_s,
        stats=stats,
        gpus=gpus,
        series=series,
        series_index=np.repeat(np.arange(len(series), dtype=np.int64), counts),
        ts=np.floor(ts_arr).astype(np.int64) if ts_arr is not None else np.empty(0, np.int64),
        values=values,
    )


def _clamp(value: float | int) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf
