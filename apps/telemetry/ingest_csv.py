"""Import of the wide samples CSV (DESIGN.md, ``manage.py import_samples``).

The file is streamed in chunks with pandas; each chunk is checked row by row with vectorised
column operations (a bad row is reported with its line number and left out, the rest goes
in), then turned into contract batches per node and stored by the same
:func:`apps.telemetry.services.gpu_samples_ingest` as live agent data (``live=False``: history
older than the live window is fine). What is unknown is created: the cluster, nodes, GPUs,
teams (from the ``team`` column), projects and one allocation per job spanning its samples.
Re-running the same file changes nothing (every sample is a duplicate the second time).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from django.conf import settings

from apps.fleet.models import Node
from apps.fleet.services import node_get_or_create

COLUMNS = [
    "timestamp",
    "node",
    "gpu_uuid",
    "gpu_model",
    "util_pct",
    "sm_active",
    "mem_used_mib",
    "mem_total_mib",
    "power_w",
    "job",
    "project",
    "team",
]
REQUIRED = ["timestamp", "node", "gpu_uuid"]
# column -> (low, high) accepted; None = unbounded
RANGES = {
    "util_pct": (0.0, 100.0),
    "sm_active": (0.0, 1.0),
    "mem_used_mib": (0.0, None),
    "mem_total_mib": (0.0, None),
    "power_w": (0.0, None),
}
VALUE_COLUMNS = ["util_pct", "sm_active", "mem_used_mib", "power_w"]
MAX_REJECTS_KEPT = 10_000


class CsvImportError(Exception):
    """The file cannot be imported at all (missing, or a header without required columns)."""


@dataclass
class CsvImportResult:
    rows: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    rejects: list[tuple[int, str]] = field(default_factory=list)  # (line, reason), first ones
    nodes: set[str] = field(default_factory=set)

    def reject(self, line: int, reason: str) -> None:
        self.rejected += 1
        if len(self.rejects) < MAX_REJECTS_KEPT:
            self.rejects.append((line, reason))


def _count_lines(path: Path) -> int:
    lines = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            lines += chunk.count(b"\n")
    return max(lines - 1, 0)


def _parse_timestamps(raw: pd.Series) -> pd.Series:
    """Epoch seconds (float) from epoch numbers or ISO-8601 strings; NaN where neither."""
    numeric = pd.to_numeric(raw, errors="coerce")
    todo = numeric.isna() & (raw != "")
    if todo.any():
        parsed = pd.to_datetime(raw[todo], utc=True, errors="coerce", format="ISO8601")
        seconds = (parsed - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
        numeric[todo] = seconds
    return numeric


def _check_chunk(
    df: pd.DataFrame, first_line: int, now_ts: int, result: CsvImportResult
) -> pd.DataFrame:
    """Parse and check one chunk; report bad rows and return the good ones, parsed."""
    lines = np.arange(first_line, first_line + len(df))
    reasons = pd.Series("", index=df.index, dtype=object)

    def flag(mask: pd.Series, reason: str) -> None:
        mask = mask & (reasons == "")
        reasons[mask] = reason

    for column in REQUIRED:
        flag(df[column].str.strip() == "", f"{column} is empty")
    ts = _parse_timestamps(df["timestamp"])
    flag(ts.isna(), "timestamp is neither epoch seconds nor ISO-8601")
    flag(ts < 0, "timestamp before 1970")
    flag(ts > now_ts + settings.FLOPWATCH_INGEST_MAX_FUTURE_S, "timestamp in the future")
    parsed = pd.DataFrame({"ts": np.floor(ts.fillna(0)).astype(np.int64)}, index=df.index)
    for column in ("node", "gpu_uuid", "gpu_model", "job", "project", "team"):
        parsed[column] = df[column].str.strip()
        # PostgreSQL text cannot hold one: the row is refused rather than the whole import.
        flag(parsed[column].str.contains("\x00", regex=False), f"{column} contains a NUL character")
    flag(parsed["gpu_uuid"].str.len() > 100, "gpu_uuid longer than 100 characters")
    flag(parsed["node"].str.len() > 253, "node longer than 253 characters")
    flag(parsed["job"].str.len() > 255, "job longer than 255 characters")
    for column, (low, high) in RANGES.items():
        raw = df[column].str.strip()
        values = pd.to_numeric(raw, errors="coerce")
        flag(values.isna() & (raw != ""), f"{column} is not a number")
        flag(np.isinf(values), f"{column} is not finite")
        flag(values < low, f"{column} below {low:g}")
        if high is not None:
            flag(values > high, f"{column} above {high:g}")
        parsed[column] = values.astype(np.float64)
    bad = (reasons != "").to_numpy()
    for line, reason in zip(lines[bad].tolist(), reasons[bad].tolist(), strict=True):
        result.reject(line, reason)
    parsed["line"] = lines
    return parsed[~bad]


def _batches_for_node(hostname: str, rows: pd.DataFrame) -> dict:
    """One contract batch for a node's rows: a series entry per GPU and job run."""
    rows = rows.sort_values(["gpu_uuid", "ts"], kind="stable")
    gpus = (
        rows.drop_duplicates("gpu_uuid", keep="last")
        .reset_index(drop=True)
        .loc[:, ["gpu_uuid", "gpu_model", "mem_total_mib"]]
    )
    gpu_payload = [
        {
            "uuid": uuid,  # no index: the CSV has none; new GPUs get the node's next one
            "model": model or None,
            "mem_total_mib": None if np.isnan(mem) else int(mem),
        }
        for uuid, model, mem in gpus.itertuples(index=False, name=None)
    ]
    # Same GPU and timestamp twice: the first row wins, the rest are duplicates.
    rows = rows.drop_duplicates(["gpu_uuid", "ts"], keep="first")
    key = rows["gpu_uuid"] + "\x00" + rows["job"]
    run_start = (key != key.shift()).to_numpy()
    bounds = [*np.flatnonzero(run_start).tolist(), len(rows)]
    columns = {c: rows[c].to_numpy() for c in ("ts", *VALUE_COLUMNS)}
    text = {c: rows[c].to_numpy() for c in ("gpu_uuid", "job", "project", "team")}
    series = []
    for a, b in itertools.pairwise(bounds):
        job = text["job"][a]
        entry = {
            "gpu": text["gpu_uuid"][a],
            "alloc": (
                {"job": job, "project": text["project"][a], "team": text["team"][a]}
                if job
                else None
            ),
            "ts": columns["ts"][a:b].tolist(),
        }
        for c in VALUE_COLUMNS:
            values = columns[c][a:b]
            if not np.isnan(values).all():
                entry[c] = [None if v != v else v for v in values.tolist()]
        series.append(entry)
    # The sampling interval, so rollups cap each sample's time at twice the real interval.
    ts_all, same_gpu = columns["ts"], (text["gpu_uuid"][1:] == text["gpu_uuid"][:-1])
    steps = np.diff(ts_all)[same_gpu] if len(ts_all) > 1 else np.empty(0)
    steps = steps[steps > 0]
    agent: dict = {"source": "csv"}
    if len(steps):
        agent["interval_s"] = float(min(max(np.median(steps), 1), 86_400))
    return {"node": hostname, "agent": agent, "gpus": gpu_payload, "series": series}


def samples_csv_import(
    *,
    path: str | Path,
    cluster: str = "imported",
    chunk_rows: int = 100_000,
    progress: Callable[[int], None] | None = None,
    now: datetime | None = None,
) -> CsvImportResult:
    """Import a wide samples CSV; returns counts and the rejected rows with line numbers.

    ``progress`` is called with the number of rows done after each chunk (a tqdm update).
    Raises :class:`CsvImportError` when the file or its header is unusable.
    """
    from apps.telemetry.ingest import IngestError, IngestForbidden
    from apps.telemetry.services import gpu_samples_ingest

    path = Path(path)
    if not path.is_file():
        raise CsvImportError(f"{path}: no such file")
    now = now or datetime.now(tz=UTC)
    now_ts = int(now.timestamp())
    result = CsvImportResult()
    try:
        header = pd.read_csv(path, nrows=0).columns.str.strip().tolist()
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise CsvImportError(f"{path}: cannot read the header: {exc}") from None
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise CsvImportError(
            f"{path}: header lacks {', '.join(missing)} (expected {','.join(COLUMNS)})"
        )
    nodes: dict[str, Node] = {}
    reader = pd.read_csv(
        path,
        dtype=str,
        keep_default_na=False,
        chunksize=chunk_rows,
        skipinitialspace=True,
        on_bad_lines="warn",
        engine="c",
    )
    first_line = 2  # line 1 is the header
    for chunk in reader:
        chunk.columns = chunk.columns.str.strip()
        for column in COLUMNS:
            if column not in chunk.columns:
                chunk[column] = ""
        result.rows += len(chunk)
        good = _check_chunk(chunk, first_line, now_ts, result)
        first_line += len(chunk)
        for hostname, rows in good.groupby("node", sort=True):
            node = nodes.get(hostname)
            if node is None:
                node, _ = node_get_or_create(hostname=hostname, cluster_slug=cluster)
                nodes[hostname] = node
            batch = _batches_for_node(hostname, rows)
            in_batch = sum(len(s["ts"]) for s in batch["series"])
            try:
                stored = gpu_samples_ingest(
                    node=node, batch=batch, live=False, now=now, max_samples=len(rows) + 1,
                    team_by_label=True,
                )  # fmt: skip
            except IngestForbidden as exc:
                for line in rows["line"].tolist():
                    result.reject(line, str(exc))
                continue
            except IngestError as exc:
                reason = "; ".join(f"{p}: {m}" for p, m in exc.errors[:3])
                for line in rows["line"].tolist():
                    result.reject(line, reason)
                continue
            result.accepted += stored.accepted
            result.duplicates += stored.duplicates + (len(rows) - in_batch)
            result.nodes.add(hostname)
        if progress:
            progress(len(chunk))
    # History: jobs whose samples ended long ago are closed now rather than by the next
    # periodic run, so a rollup right after the import sees them whole.
    from apps.tenancy.services import allocations_close_stale

    allocations_close_stale(now=now)
    return result


def csv_lines_count(path: str | Path) -> int:
    """Data rows in the file (lines after the header), for a progress bar's total."""
    return _count_lines(Path(path))
