"""Ingest benchmark: gunicorn + PostgreSQL as in production, several concurrent clients
sending pre-built gzip batches of 1,000 samples for at least 30 s.

Prints accepted samples/s, p50/p99 request latency, the rate of a bare binary COPY of the
same rows (the ceiling) and the ratio. Run: ``python tests/bench/run.py ingest`` or directly
with ``DATABASE_URL=postgres://postgres@127.0.0.1:5432/flopwatch_bench`` (the benchmark
works in its own database, ``<name>_ingest``, created afresh each run).

Knobs (environment): BENCH_SECONDS (30), BENCH_CLIENTS (6), BENCH_WORKERS (gunicorn, 3),
BENCH_NODES (48).

Measured 2026-11-29 on the 2-core CI box with nothing else running (load average 0.8
before; the load generator shares the two cores): 189,677 and 196,131 samples/s accepted,
p50 30 ms, p99 53-55 ms per 1,000-sample batch, against a bare COPY ceiling of 361,000 and
395,000 rows/s, i.e. 50-53 %: both targets met. On 2026-11-24, with other test runs keeping
the load average at 4-6, the same benchmark gave 30,058 samples/s against 88,274 (34 %).
"""

from __future__ import annotations

import gzip
import http.client
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SECONDS = float(os.environ.get("BENCH_SECONDS", "30"))
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "6"))
WORKERS = int(os.environ.get("BENCH_WORKERS", "3"))
NODES = int(os.environ.get("BENCH_NODES", "48"))
GPUS_PER_NODE = 8
POINTS = 125  # x 8 GPUs = 1,000 samples per batch
INTERVAL = 10
BASE_URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/flopwatch_bench")
DB_URL = BASE_URL.rsplit("/", 1)[0] + "/" + BASE_URL.rsplit("/", 1)[1] + "_ingest"
FIELDS = ("util_pct", "sm_active", "mem_used_mib", "power_w", "temp_c")


def recreate_database() -> None:
    import psycopg

    name = DB_URL.rsplit("/", 1)[1]
    with psycopg.connect(DB_URL.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(now: int) -> tuple[list[tuple[str, bytes]], dict[str, list]]:
    """Nodes with tokens, and per node its batches (oldest first), gzip-compressed."""
    import numpy as np
    import orjson

    from apps.fleet.services import node_get_or_create, node_token_issue

    rng = np.random.default_rng(7)
    tokens = []
    batches: dict[str, list] = {}
    # Enough distinct samples for SECONDS at up to 180,000 samples/s, spread over the nodes.
    per_node = int(SECONDS * 180_000 / 1000 / NODES) + 2
    span = per_node * POINTS * INTERVAL
    start0 = now - span - 3600
    assert span + 3600 < 7 * 86_400, "more history than the live window; use more nodes"
    for n in range(NODES):
        host = f"bench-{n:03d}"
        node, _ = node_get_or_create(hostname=host, cluster_slug="bench")
        tokens.append((host, node_token_issue(node=node)))
        gpus = [
            {
                "uuid": f"GPU-bench-{n:03d}-{i}",
                "index": i,
                "model": "NVIDIA H100 80GB HBM3",
                "mem_total_mib": 81559,
            }
            for i in range(GPUS_PER_NODE)
        ]
        # Values are drawn once per node and reused with each batch's own timestamps: the
        # server does the same work whatever the numbers are, and building stays quick.
        values = []
        for _i in range(GPUS_PER_NODE):
            util = rng.uniform(0, 100, POINTS).round(1)
            values.append(
                {
                    "util_pct": util.tolist(),
                    "sm_active": (util / 110).round(3).tolist(),
                    "mem_used_mib": rng.uniform(0, 80000, POINTS).round(0).tolist(),
                    "power_w": rng.uniform(60, 700, POINTS).round(1).tolist(),
                    "temp_c": rng.integers(30, 85, POINTS).tolist(),
                }
            )
        out = []
        for b in range(per_node):
            t0 = start0 + b * POINTS * INTERVAL
            ts = list(range(t0, t0 + POINTS * INTERVAL, INTERVAL))
            series = [
                {
                    "gpu": gpus[i]["uuid"],
                    "alloc": {
                        "job": f"slurm:{n * 10 + i // 4}",
                        "project": f"proj-{n % 5}",
                        "user": "bench",
                    },
                    "ts": ts,
                    **values[i],
                }
                for i in range(GPUS_PER_NODE)
            ]
            body = {
                "node": host,
                "batch_id": f"{host}-{b}",
                "agent": {"version": "bench", "source": "sim", "interval_s": INTERVAL},
                "gpus": gpus,
                "series": series,
            }
            out.append(gzip.compress(orjson.dumps(body), compresslevel=6))
        batches[host] = out
    return tokens, batches


def load(port: int, tokens, batches, seconds: float) -> tuple:
    """Clients each take nodes round-robin and send their batches in order."""
    lock = threading.Lock()
    accepted = 0
    duplicates = 0
    errors = 0
    latencies: list[float] = []
    sent: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    assignments = [tokens[i::CLIENTS] for i in range(CLIENTS)]

    def client(mine):
        nonlocal accepted, duplicates, errors
        import orjson

        # Interleave nodes: batch k of every node before batch k+1 of any.
        queue = sorted(
            (
                (k, host, token, body)
                for host, token in mine
                for k, body in enumerate(batches[host])
            ),
            key=lambda item: item[0],
        )
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        local = []
        for _k, host, token, body in queue:
            if time.monotonic() > deadline:
                break
            t = time.perf_counter()
            try:
                conn.request(
                    "POST",
                    "/api/v1/samples",
                    body=body,
                    headers={
                        "Authorization": f"Bearer {token}",
                        "Content-Type": "application/json",
                        "Content-Encoding": "gzip",
                    },
                )
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                with lock:
                    errors += 1
                continue
            local.append(time.perf_counter() - t)
            sent[host] = sent.get(host, 0) + 1
            if response.status == 202:
                answer = orjson.loads(data)
                with lock:
                    accepted += answer["accepted"]
                    duplicates += answer["duplicates"]
            else:
                with lock:
                    errors += 1
                    if errors < 5:
                        print(f"  HTTP {response.status}: {data[:300]!r}", flush=True)
            if response.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        with lock:
            latencies.extend(local)

    threads = [threading.Thread(target=client, args=(a,)) for a in assignments]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return accepted, duplicates, latencies, time.monotonic() - started, errors, sent


def _proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu(master: int) -> dict[tuple[str, int], float]:
    """CPU seconds so far of the gunicorn master and workers, and of the PostgreSQL backends
    serving the benchmark database (same machine)."""
    import psycopg

    out = {("web", master): _proc_cpu(master)}
    for child in Path(f"/proc/{master}/task/{master}/children").read_text().split():
        out[("web", int(child))] = _proc_cpu(int(child))
    name = DB_URL.rsplit("/", 1)[1]
    with psycopg.connect(DB_URL, autocommit=True) as conn:
        pids = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    for (pid,) in pids:
        out[("db", pid)] = _proc_cpu(pid)
    return out


def copy_ceiling(batches) -> tuple[int, float]:
    """Bare binary COPY of the same rows into an empty raw table, 100,000 rows per COPY."""
    import numpy as np
    import orjson
    import psycopg

    from apps.fleet.models import Gpu
    from apps.telemetry.storage import copy_buffer

    gpu_ids = dict(Gpu.objects.values_list("uuid", "pk"))
    cols: dict[str, list] = {"gpu_id": [], "ts": [], **{f: [] for f in FIELDS}}
    for bodies in batches.values():
        for body in bodies:
            for s in orjson.loads(gzip.decompress(body))["series"]:
                cols["gpu_id"].append(np.full(len(s["ts"]), gpu_ids[s["gpu"]]))
                cols["ts"].append(np.array(s["ts"]))
                for f in FIELDS:
                    cols[f].append(np.array(s[f], dtype=np.float64))
    arrays = {k: np.concatenate(v) for k, v in cols.items()}
    n = len(arrays["ts"])
    names = ", ".join(["gpu_id", "ts", *FIELDS])
    with psycopg.connect(DB_URL, autocommit=True) as conn:
        conn.execute("TRUNCATE telemetry_rawsample")
        buffers = []
        for i in range(0, n, 100_000):
            sl = slice(i, i + 100_000)
            buffers.append(
                copy_buffer(
                    [(arrays["gpu_id"][sl], "int8"), (arrays["ts"][sl], "int8")]
                    + [(arrays[f][sl], "float8") for f in FIELDS]
                )
            )
        started = time.perf_counter()
        with conn.cursor() as cur:
            for buf in buffers:
                with (
                    conn.transaction(),
                    cur.copy(
                        f"COPY telemetry_rawsample ({names}) FROM STDIN (FORMAT BINARY)"
                    ) as copy,
                ):
                    copy.write(buf)
        elapsed = time.perf_counter() - started
    return n, elapsed


def main() -> int:
    recreate_database()
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": DB_URL,
            "FLOPWATCH_ENV": "production",
            "SECRET_KEY": secrets.token_urlsafe(64),
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "FLOPWATCH_SSL_REDIRECT": "0",
            "FLOPWATCH_LOG_LEVEL": "WARNING",
            "FLOPWATCH_DB_CONN_MAX_AGE": "600",
            "FLOPWATCH_VAR_DIR": "/tmp/flopwatch-bench-ingest",
            "DJANGO_SETTINGS_MODULE": "apps.settings",
        }
    )
    os.environ.update(env)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=env,
        check=True,
    )
    import django

    django.setup()
    from apps.telemetry.storage import raw_partitions_ensure

    now = int(time.time())
    t = time.perf_counter()
    tokens, batches = build(now)
    raw_partitions_ensure(start_ts=now - 7 * 86_400, end_ts=now + 86_400)
    total = sum(len(v) for v in batches.values())
    print(f"built {total} gzip batches of 1,000 samples in {time.perf_counter() - t:.1f} s")
    from django.db import connections

    connections.close_all()

    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn", "apps.wsgi:application",
            "--bind", f"127.0.0.1:{port}", "--workers", str(WORKERS),
            "--worker-class", "sync", "--log-level", "warning", "--backlog", "256",
        ],
        cwd=ROOT, env=env,
    )  # fmt: skip
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        # Warm up: every worker imports everything and opens its connection.
        warm = {host: bodies[:1] for host, bodies in batches.items()}
        load(port, tokens[: CLIENTS * 2], warm, 10)
        rest = {host: bodies[1:] for host, bodies in batches.items()}
        cpu_before = server_cpu(server.pid)
        accepted, duplicates, latencies, elapsed, errors, sent = load(port, tokens, rest, SECONDS)
        cpu_after = server_cpu(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    rate = accepted / elapsed
    latencies.sort()
    p50 = statistics.median(latencies) * 1000 if latencies else float("nan")
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000 if latencies else float("nan")
    print(
        f"ingest: {len(latencies)} requests, {CLIENTS} clients, {WORKERS} gunicorn workers, "
        f"{elapsed:.1f} s"
    )
    print(
        f"  accepted samples/s: {rate:,.0f}  (accepted {accepted:,}, duplicates {duplicates:,}, errors {errors})"
    )
    print(f"  latency p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    # The ceiling copies the rows that were sent (warm-up included) into an emptied table.
    web_s = sum(cpu_after[k] - cpu_before.get(k, 0.0) for k in cpu_after if k[0] == "web")
    db_s = sum(cpu_after[k] - cpu_before.get(k, 0.0) for k in cpu_after if k[0] == "db")
    if accepted:
        per_k = (web_s + db_s) / accepted * 1000 * 1000
        print(
            f"  server CPU per 1,000 samples: {per_k:.1f} ms (gunicorn {web_s / accepted * 1e6:.1f}"
            f" + PostgreSQL backends {db_s / accepted * 1e6:.1f}); machine load average during "
            f"the run {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
        )
        print(
            f"  => on {os.cpu_count()} otherwise idle CPUs (load generator excluded) about "
            f"{os.cpu_count() / (per_k / 1000) * 1000:,.0f} samples/s (estimate, not measured)"
        )
    n, copy_s = copy_ceiling({h: b[: 1 + sent.get(h, 0)] for h, b in batches.items()})
    ceiling = n / copy_s
    print(f"  bare binary COPY ceiling: {ceiling:,.0f} rows/s ({n:,} rows in {copy_s:.2f} s)")
    print(f"  ratio ingest / COPY: {rate / ceiling:.0%}")
    print(f"  target >= 100,000 samples/s: {'met' if rate >= 100_000 else 'NOT met'}; "
          f">= 25 % of COPY: {'met' if rate >= 0.25 * ceiling else 'NOT met'}")  # fmt: skip
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
