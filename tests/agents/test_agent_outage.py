"""Outage behaviour: keep sampling while the server is down, then deliver everything once."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from agents.agent import Agent
from agents.push import Backoff, Pusher, parse_retry_after
from agents.sources import GpuInfo, Reading
from agents.spool import Spool

ROOT = Path(__file__).resolve().parents[2]


class CountingSource:
    """Two GPUs; every read yields one reading per GPU at ``now``."""

    name = "test"

    def read(self, *, now: float):
        gpus = [GpuInfo(uuid=f"GPU-{i}", index=i, model="m", mem_total_mib=1) for i in range(2)]
        return gpus, [Reading(gpu=g.uuid, ts=now, values={"util_pct": 50.0}) for g in gpus]

    def close(self) -> None:
        pass


def _agent(tmp_path, sink, **kw):
    spool = Spool(path=tmp_path / "spool.sqlite", max_bytes=kw.pop("max_bytes", 256 * 2**20))
    pusher = Pusher(
        server=sink.url,
        token="tok",
        timeout_s=2,
        backoff=Backoff(rng=__import__("random").Random(1)),
    )
    return Agent(
        node="n1", source=CountingSource(), spool=spool, pusher=pusher, interval_s=10, **kw
    )


def test_outage_in_process_zero_lost_zero_duplicated(tmp_path, sink):
    agent = _agent(tmp_path, sink)
    t = 1_800_000_000
    for _ in range(3):
        agent.tick(now=t)
        t += 10
    sink.stop()
    for _ in range(30):  # 5 simulated minutes of outage: sampling goes on
        agent.tick(now=t)
        t += 10
    st = agent.stats()
    assert st.spooled == 60
    assert st.last_error
    assert st.last_error.startswith("push")
    sink.start()  # same port
    for _ in range(20):
        agent.tick(now=t)
        t += 10
    agent.flush(now=t + 120)  # past any backoff still pending from the outage
    expected = {(f"GPU-{i}", 1_800_000_000 + 10 * k) for k in range(53) for i in range(2)}
    assert Counter(sink.samples) == Counter(dict.fromkeys(expected, 1))
    assert len(set(sink.batch_ids)) == len(sink.batch_ids)
    st = agent.stats()
    assert (st.spooled, st.sent, st.collected, st.dropped) == (0, 106, 106, 0)
    assert st.last_error is None
    # Stats travel with each batch.
    assert sink.payloads[-1]["agent"]["stats"]["sent"] >= 100


def test_retry_after_and_no_retry_for_4xx(tmp_path, sink):
    agent = _agent(tmp_path, sink)
    sink.status, sink.headers = 503, {"Retry-After": "120"}
    agent.tick(now=1000)
    assert agent.next_attempt >= 1000 + 120
    agent.tick(now=1010)  # not due: no attempt, still spooled
    assert len(agent.spool) == 2
    sink.status, sink.headers = 400, {}
    agent.tick(now=1200)
    assert len(agent.spool) == 0
    assert [r["status"] for r in agent.spool.rejected()] == [400, 400, 400]
    assert agent.stats().sent == 0
    sink.status = 202
    agent.tick(now=1210)
    assert agent.stats().sent == 2


def test_backoff_bounds_and_retry_after_parsing():
    b = Backoff(rng=__import__("random").Random(0))
    delays = [b.next_delay() for _ in range(12)]
    assert all(0.5 <= d <= 60 for d in delays)
    assert delays[-1] >= 30  # capped exponential, equal jitter
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470) == 10.0
    assert parse_retry_after("soon") is None


def test_spool_full_drops_oldest_and_counts(tmp_path, sink):
    sink.stop()
    agent = _agent(tmp_path, sink, max_bytes=4000)
    for k in range(60):
        agent.tick(now=5000 + 10 * k)
    st = agent.stats()
    assert st.dropped > 0
    assert agent.spool.size_bytes <= 4000
    assert st.collected == 120
    assert st.spooled + st.dropped == 120
    sink.start()
    agent.tick(now=6000)
    got = sorted({t for _, t in sink.samples})
    assert got[0] > 5000
    assert got[-1] == 6000
    assert sink.payloads[-1]["agent"]["stats"]["dropped"] >= st.dropped > 0


def test_spool_survives_reopen_and_torn_write(tmp_path):
    path = tmp_path / "s.sqlite"
    sp = Spool(path=path)
    payload = {
        "node": "n",
        "batch_id": "b1",
        "agent": {},
        "gpus": [],
        "series": [{"gpu": "g", "ts": [1, 2]}],
    }
    sp.put(payload)
    # A crash mid-transaction: a raw BEGIN + INSERT that is never committed.
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("BEGIN IMMEDIATE")
    raw.execute(
        "INSERT INTO batches (batch_id, created, samples, size, body) VALUES ('b2', 0, 5, 1, x'00')"
    )
    raw.close()  # closed without commit (like a process killed mid-write)
    sp.close()
    sp = Spool(path=path)
    [b] = sp.peek(limit=10)
    assert b.batch_id == "b1"
    assert b.payload == payload
    assert sp.counters()["collected"] == 2


def _start_agent(sink, spool):
    env = dict(os.environ, PYTHONPATH=str(ROOT), FLOPWATCH_TOKEN="tok")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agents",
            "--server",
            sink.url,
            "--source",
            "sim",
            "--node",
            "gpu-a-001",
            "--interval",
            "0.2",
            "--spool",
            str(spool),
            "--log-level",
            "WARNING",
            "--timeout",
            "1",
        ],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )


def test_outage_agent_killed_and_restarted_mid_outage(tmp_path, sink):
    spool = tmp_path / "spool.sqlite"
    p = _start_agent(sink, spool)
    try:
        deadline = time.time() + 10
        while len(sink.samples) < 16 and time.time() < deadline:
            time.sleep(0.05)
        assert len(sink.samples) >= 16, p.stderr and p.stderr.read1().decode()
        sink.stop()
        time.sleep(1.0)
        p.send_signal(signal.SIGKILL)  # no chance to clean up
        p.wait(5)
        p = _start_agent(sink, spool)
        time.sleep(1.0)  # still down: the new process spools on top of the old spool
        sink.start()
        deadline = time.time() + 12  # backoff after a 1 s outage is a few seconds at most
        while time.time() < deadline:
            time.sleep(0.2)
            n = sqlite3.connect(spool).execute("SELECT COUNT(*) FROM batches").fetchone()[0]
            if n == 0 and len(sink.samples) > 40:
                break
        p.send_signal(signal.SIGTERM)
        p.wait(5)
    finally:
        if p.poll() is None:
            p.kill()
    c = Counter(sink.samples)
    assert max(c.values()) == 1, "duplicated samples"
    left = (
        sqlite3.connect(spool)
        .execute("SELECT COUNT(*), COALESCE(SUM(samples),0) FROM batches")
        .fetchone()
    )
    assert left == (0, 0)
    counters = dict(sqlite3.connect(spool).execute("SELECT name, value FROM counters").fetchall())
    assert counters["sent"] == counters["collected"] == len(sink.samples)
    assert counters["dropped"] == 0
    # Every GPU got the same (gap-free apart from the kill) timeline.
    per_gpu = Counter(g for g, _ in sink.samples)
    assert len(per_gpu) == 8
    assert len(set(per_gpu.values())) == 1


def test_corrupt_spooled_batch_is_set_aside(tmp_path, sink):
    agent = _agent(tmp_path, sink)
    sink.stop()
    agent.tick(now=100)
    agent.tick(now=110)
    raw = sqlite3.connect(tmp_path / "spool.sqlite", isolation_level=None)
    raw.execute("UPDATE batches SET body = x'1f8b00' WHERE id = (SELECT MIN(id) FROM batches)")
    raw.close()
    sink.start()
    agent.flush(now=1000)
    assert len(sink.samples) == 2
    assert agent.spool.rejected()[0]["reason"].startswith("corrupt")


def test_once_returns_1_and_keeps_batch_when_server_down(tmp_path):
    from agents.cli import main

    spool = tmp_path / "s.sqlite"
    argv = [
        "--server",
        "http://127.0.0.1:9",
        "--token",
        "t",
        "--source",
        "sim",
        "--node",
        "gpu-a-001",
        "--once",
        "--spool",
        str(spool),
        "--timeout",
        "1",
        "--log-level",
        "ERROR",
    ]
    assert main(argv) == 1
    assert len(Spool(path=spool)) == 1


def test_spool_falls_back_to_state_dir(tmp_path, monkeypatch):
    from agents.cli import open_spool
    from agents.config import load_config

    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    cfg = load_config(argv=["--dry-run", "--spool", str(blocker / "spool.sqlite")], environ={})
    sp = open_spool(cfg)
    assert sp.path == str(tmp_path / "state" / "flopwatch-agent" / "spool.sqlite")


def test_spool_counts_kept_in_memory_match_the_table(tmp_path):
    def payload(k: int) -> dict:
        return {
            "batch_id": f"b{k}",
            "series": [{"gpu": "GPU-0", "ts": list(range(k % 3 + 1)), "util_pct": [1.0] * 3}],
        }

    def table(sp: Spool) -> tuple[int, int, int]:
        row = sp._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(samples), 0), COALESCE(SUM(size), 0) FROM batches"
        ).fetchone()
        return tuple(row)

    def memory(sp: Spool) -> tuple[int, int, int]:
        return len(sp), sp.counters()["spooled"], sp.size_bytes

    path = tmp_path / "s.sqlite"
    sp = Spool(path=path)
    for k in range(6):
        sp.put(payload(k), now=k)
    sp.ack(sp.peek()[0])
    sp.reject(sp.peek()[0], status=400, reason="bad")
    assert memory(sp) == table(sp) == (4, 9, sp.size_bytes)
    # Full: dropping oldest to make room, then a failure mid-transaction rolls it all back.
    sp.max_bytes = sp.size_bytes
    with pytest.raises(KeyError):
        sp.put({"series": []}, now=9)
    assert memory(sp) == table(sp)
    assert len(sp) == 4
    sp.put(payload(7), now=10)
    assert memory(sp) == table(sp)
    sp.close()
    reopened = Spool(path=path)
    assert memory(reopened) == table(reopened)
    reopened.close()


class RecordingSource(CountingSource):
    def __init__(self) -> None:
        self.stamps: list[float] = []

    def read(self, *, now: float):
        self.stamps.append(now)
        return super().read(now=now)


def test_ticks_land_on_the_interval_grid(tmp_path):
    """Samples carry multiples of the interval (what the rollup's grid path sums without a
    sort), though the clock starts anywhere and every wake-up is a little late; a tick
    that fell far behind keeps its own time."""
    source = RecordingSource()
    spool = Spool(path=tmp_path / "spool.sqlite", max_bytes=2**20)
    t = [1_800_000_003.7]

    def wait(seconds: float) -> None:
        t[0] += seconds + 0.004  # the scheduler's lateness
        if len(source.stamps) == 3:
            t[0] += 7  # a stall: the fourth tick runs 7 s late

    agent = Agent(
        node="n1", source=source, spool=spool, pusher=None, interval_s=10, clock=lambda: t[0]
    )
    agent.run(wait=wait, max_ticks=5)
    assert source.stamps[:3] == [1_800_000_010, 1_800_000_020, 1_800_000_030]
    assert source.stamps[3] == pytest.approx(1_800_000_047.004, abs=1e-6)
    # The schedule itself stays on the grid.
    assert source.stamps[4] == 1_800_000_050
