"""``make demo``: run simulated agents for every node of the demo fleet in one process.

    python -m agents.demo --server http://127.0.0.1:8000 --token TOKEN [--tokens FILE.json]
        [--interval 10] [--spool-dir var/demo-spool] [--seed 42]

``--tokens`` maps hostname -> node token (JSON); otherwise every node uses ``--token``.
Each node gets its own Agent, spool and thread; Ctrl-C stops them all (spools are kept).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from pathlib import Path

from agents.agent import Agent
from agents.push import Pusher
from agents.sources.sim import SimSource, demo_fleet
from agents.spool import Spool


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m agents.demo", description=__doc__)
    ap.add_argument("--server", default="http://127.0.0.1:8000")
    ap.add_argument("--token", default="demo")
    ap.add_argument("--tokens", help="JSON file mapping hostname to node token")
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--spool-dir", default="var/demo-spool")
    ap.add_argument("--seed", default="42")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s: %(message)s"
    )
    tokens = json.loads(Path(args.tokens).read_text()) if args.tokens else {}
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    threads = []
    for node in demo_fleet(seed=args.seed).nodes:
        agent = Agent(
            node=node.hostname,
            source=SimSource(seed=args.seed, hostname=node.hostname),
            spool=Spool(path=Path(args.spool_dir) / f"{node.hostname}.sqlite"),
            pusher=Pusher(server=args.server, token=tokens.get(node.hostname, args.token)),
            interval_s=args.interval,
        )
        threads.append(
            threading.Thread(target=_run, args=(agent, stop), name=node.hostname, daemon=True)
        )
    for t in threads:
        t.start()
    while not stop.wait(1):
        pass
    for t in threads:
        t.join(10)
    return 0


def _run(agent: Agent, stop: threading.Event) -> None:
    agent.run(stop=stop)


if __name__ == "__main__":
    raise SystemExit(main())
