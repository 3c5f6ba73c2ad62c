"""Run every benchmark in tests/bench (``make bench``) and let each print its figures.

Benchmarks are never part of ``make test``. Those that need PostgreSQL read ``DATABASE_URL``
(default here: the local ``flopwatch_bench`` database on 127.0.0.1, created if missing).
Pass names to run a subset: ``python tests/bench/run.py ingest rollup``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/flopwatch_bench"


def ensure_database(url: str) -> None:
    """Create the benchmark database when it does not exist yet."""
    if not url.startswith("postgres"):
        return
    import psycopg

    name = url.rsplit("/", 1)[1]
    admin_url = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as connection:
        exists = connection.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
        if not exists:
            connection.execute(f'CREATE DATABASE "{name}"')


def main(argv: list[str]) -> int:
    env = dict(os.environ)
    env.setdefault("DATABASE_URL", DEFAULT_DATABASE_URL)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["PYTHONPATH"] = str(ROOT)
    ensure_database(env["DATABASE_URL"])
    scripts = sorted(HERE.glob("bench_*.py"))
    if argv:
        scripts = [s for s in scripts if any(name in s.stem for name in argv)]
    failures = 0
    for script in scripts:
        print(f"\n=== {script.stem} ===", flush=True)
        started = time.monotonic()
        result = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, check=False)
        print(f"--- {script.stem}: exit {result.returncode} in {time.monotonic() - started:.0f} s")
        failures += result.returncode != 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
