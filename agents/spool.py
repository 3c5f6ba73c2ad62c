"""Local SQLite spool: every batch is written here before it is sent.

A batch leaves the ``batches`` table only when the server accepted it (``ack``) or refused
it for good (``reject`` moves it to ``rejected``, kept for an admin to inspect). The spool
is bounded (payload bytes); when full the oldest batches are dropped and their samples
counted in ``dropped``, which is reported to the server with every batch.

Durability: WAL with ``synchronous=NORMAL``. In WAL mode NORMAL never corrupts the database
and never loses a committed transaction when the *agent* crashes or is killed (the WAL is
in the OS page cache); only an OS crash / power loss can lose the last commits. Power loss
stops the GPUs too, so at most the last batch of an event that is already visible as a
silent node is at stake, while FULL would add an fsync every interval on thousands of nodes.
A write interrupted mid-transaction is rolled back by SQLite at the next open.
"""

from __future__ import annotations

import gzip
import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.payload import count_samples

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    samples INTEGER NOT NULL,
    size INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id TEXT NOT NULL,
    rejected_at REAL NOT NULL,
    status INTEGER,
    reason TEXT,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
COUNTERS = ("collected", "sent", "dropped", "rejected")


@dataclass(slots=True)
class SpooledBatch:
    """A batch waiting to be sent."""

    id: int
    batch_id: str
    samples: int
    payload: dict[str, Any]


class Spool:
    """A bounded, crash-safe queue of batches (oldest first)."""

    def __init__(self, *, path: str | Path, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.path = str(path)
        self.max_bytes = max_bytes
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves so one batch = one transaction.
        # check_same_thread=False: a spool may be built in one thread and driven by another
        # (agents.demo); it is never used by two threads at once.
        self._db = sqlite3.connect(
            self.path, isolation_level=None, timeout=30, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        for name in COUNTERS:
            self._db.execute("INSERT OR IGNORE INTO counters VALUES (?, 0)", (name,))
        self._bytes = self._count = self._samples = 0
        self._recount()

    def _recount(self) -> None:
        # Size, batches and samples waiting are kept in memory and only counted from the
        # table at open and after a rollback: stats go out with every batch sent, and a full
        # scan per send made catching up on a large spool quadratic (a 100,000-batch backlog
        # cost 14 ms of CPU per batch sent).
        row = self._db.execute(
            "SELECT COALESCE(SUM(size), 0), COUNT(*), COALESCE(SUM(samples), 0) FROM batches"
        ).fetchone()
        self._bytes, self._count, self._samples = (int(v) for v in row)

    # -- counters -------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        """Cumulative counters (survive restarts) plus ``spooled``: samples waiting now."""
        out = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
        out["spooled"] = self._samples
        return out

    def _bump(self, name: str, by: int) -> None:
        self._db.execute("UPDATE counters SET value = value + ? WHERE name = ?", (by, name))

    # -- queue ----------------------------------------------------------------------------
    def put(self, payload: dict[str, Any], *, now: float | None = None) -> int:
        """Store a batch; drop oldest batches first if the bound would be exceeded.

        Returns the number of samples dropped to make room.
        """
        body = gzip.compress(json.dumps(payload, separators=(",", ":")).encode(), 6)
        samples = count_samples(payload)
        dropped = 0
        self._db.execute("BEGIN IMMEDIATE")
        try:
            while self._bytes + len(body) > self.max_bytes:
                row = self._db.execute(
                    "SELECT id, samples, size FROM batches ORDER BY id LIMIT 1"
                ).fetchone()
                if row is None:
                    break  # a single batch larger than the bound is still kept
                self._db.execute("DELETE FROM batches WHERE id = ?", (row[0],))
                self._bytes -= row[2]
                self._count -= 1
                self._samples -= row[1]
                dropped += row[1]
            self._db.execute(
                "INSERT INTO batches (batch_id, created, samples, size, body) VALUES (?,?,?,?,?)",
                (payload["batch_id"], now or time.time(), samples, len(body), body),
            )
            self._bump("collected", samples)
            if dropped:
                self._bump("dropped", dropped)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            self._recount()
            raise
        self._bytes += len(body)
        self._count += 1
        self._samples += samples
        if dropped:
            log.warning("spool full (%d bytes): dropped %d oldest samples", self.max_bytes, dropped)
        return dropped

    def peek(self, *, limit: int = 1) -> list[SpooledBatch]:
        """The oldest ``limit`` batches, oldest first.

        A body that cannot be decoded (disk corruption) is moved to ``rejected`` instead of
        blocking the queue forever.
        """
        out: list[SpooledBatch] = []
        while not out:
            rows = self._db.execute(
                "SELECT id, batch_id, samples, body FROM batches ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
            if not rows:
                break
            out = self._decode(rows)
        return out

    def _decode(self, rows: list[Any]) -> list[SpooledBatch]:
        out: list[SpooledBatch] = []
        for r in rows:
            batch = SpooledBatch(id=r[0], batch_id=r[1], samples=r[2], payload={})
            try:
                batch.payload = json.loads(gzip.decompress(r[3]))
            except (OSError, EOFError, ValueError) as exc:
                log.error("spooled batch %s is corrupt (%s); set aside", r[1], exc)
                self.reject(batch, status=None, reason=f"corrupt in spool: {exc}")
                continue
            out.append(batch)
        return out

    def ack(self, batch: SpooledBatch) -> None:
        """The server accepted the batch: delete it and count its samples as sent."""
        self._delete(batch, counter="sent")

    def reject(self, batch: SpooledBatch, *, status: int | None, reason: str) -> None:
        """The server refused the batch for good: set it aside in ``rejected``."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(
                "INSERT INTO rejected (batch_id, rejected_at, status, reason, body) "
                "SELECT batch_id, ?, ?, ?, body FROM batches WHERE id = ?",
                (time.time(), status, reason[:2000], batch.id),
            )
            self._delete(batch, counter="rejected", in_tx=True)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            self._recount()
            raise

    def _delete(self, batch: SpooledBatch, *, counter: str, in_tx: bool = False) -> None:
        if not in_tx:
            self._db.execute("BEGIN IMMEDIATE")
        try:
            row = self._db.execute(
                "SELECT size, samples FROM batches WHERE id = ?", (batch.id,)
            ).fetchone()
            if row is not None:
                self._db.execute("DELETE FROM batches WHERE id = ?", (batch.id,))
                self._bump(counter, batch.samples)
            if not in_tx:
                self._db.execute("COMMIT")
        except BaseException:
            if not in_tx:
                self._db.execute("ROLLBACK")
                self._recount()
            raise
        if row is not None:
            self._bytes -= row[0]
            self._count -= 1
            self._samples -= row[1]

    def __len__(self) -> int:
        return self._count

    def rejected(self) -> list[dict[str, Any]]:
        """Batches the server refused (for inspection)."""
        rows = self._db.execute(
            "SELECT batch_id, status, reason FROM rejected ORDER BY id"
        ).fetchall()
        return [{"batch_id": r[0], "status": r[1], "reason": r[2]} for r in rows]

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def close(self) -> None:
        self._db.close()
