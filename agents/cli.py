"""``flopwatch-agent`` entry point: parse configuration, wire the parts, run the loop."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from agents import __version__
from agents.agent import Agent
from agents.attribution import Attributor, Chain, Kubernetes, Slurm, StaticMap
from agents.config import Config, ConfigError, load_config
from agents.push import Pusher, PushResult
from agents.sources import Source
from agents.spool import Spool

log = logging.getLogger("agents")


class PrintPusher:
    """``--dry-run``: 'sends' a batch by printing it as one JSON document on stdout."""

    def __init__(self, *, stream: Any = None) -> None:
        self.stream = stream or sys.stdout

    def send(self, payload: dict[str, Any]) -> PushResult:
        self.stream.write(json.dumps(payload, indent=2) + "\n")
        self.stream.flush()
        return PushResult("ok", status=None)


def make_source(cfg: Config) -> Source:
    """Build the configured source (imports stay local: nvml needs pynvml, sim needs numpy)."""
    if cfg.source == "nvml":
        from agents.sources.nvml import NvmlSource

        return NvmlSource(first_window_s=cfg.interval)
    if cfg.source == "dcgm":
        from agents.sources.dcgm import DcgmSource

        return DcgmSource(url=cfg.dcgm_url, timeout_s=min(cfg.timeout, cfg.interval))
    if cfg.source == "sim":
        from agents.sources.sim import SimSource

        return SimSource(
            seed=cfg.sim_seed, hostname=cfg.node, gpus=cfg.sim_gpus, model=cfg.sim_model
        )
    from agents.sources.replay import ReplaySource

    return ReplaySource(
        path=cfg.replay_file or "", speed=cfg.replay_speed, shift=cfg.replay_shift, node=cfg.node
    )


def make_attributor(cfg: Config) -> Attributor | None:
    names = [n.strip() for n in cfg.attribution.split(",") if n.strip()]
    if names == ["auto"]:
        names = (["static"] if cfg.static_map else []) + (
            ["slurm"] if cfg.source == "nvml" else ["k8s"] if cfg.source == "dcgm" else []
        )
    chain: list[Attributor] = []
    for n in names:
        if n == "none":
            continue
        if n == "static":
            if not cfg.static_map:
                raise ConfigError(
                    "--static-map (FLOPWATCH_STATIC_MAP): required by --attribution static"
                )
            chain.append(StaticMap(path=cfg.static_map))
        elif n == "slurm":
            chain.append(Slurm())
        elif n == "k8s":
            chain.append(Kubernetes())
        else:
            raise ConfigError(f"--attribution (FLOPWATCH_ATTRIBUTION): unknown attributor {n!r}")
    return Chain(chain) if chain else None


def _state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "flopwatch-agent"


def open_spool(cfg: Config) -> Spool:
    """Open the spool; fall back to the user's state dir when the path is not writable."""
    max_bytes = int(cfg.spool_max_mb * 1024 * 1024)
    try:
        return Spool(path=cfg.spool, max_bytes=max_bytes)
    except (OSError, Exception) as exc:  # sqlite3.OperationalError, PermissionError
        fallback = _state_dir() / "spool.sqlite"
        if Path(cfg.spool) == fallback:
            raise
        log.warning("spool %s not usable (%s); using %s instead", cfg.spool, exc, fallback)
        return Spool(path=fallback, max_bytes=max_bytes)


def main(argv: list[str] | None = None) -> int:
    """Run the agent; returns the process exit code (2 for configuration errors)."""
    try:
        cfg = load_config(argv=argv)
    except ConfigError as exc:
        print(f"flopwatch-agent: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=cfg.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        attributor = make_attributor(cfg)
        source = make_source(cfg)
    except ConfigError as exc:
        print(f"flopwatch-agent: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"flopwatch-agent: error: --source {cfg.source}: {exc}", file=sys.stderr)
        return 1
    spool = Spool(path=":memory:") if cfg.dry_run else open_spool(cfg)
    pusher: Any = (
        PrintPusher()
        if cfg.dry_run
        else Pusher(server=cfg.server or "", token=cfg.token or "", timeout_s=cfg.timeout)
    )
    agent = Agent(
        node=cfg.node,
        source=source,
        spool=spool,
        pusher=pusher,
        attributor=attributor,
        interval_s=cfg.interval,
        batch_seconds=cfg.batch_seconds,
    )
    log.info(
        "flopwatch-agent %s: node=%s source=%s interval=%ss spool=%s",
        __version__,
        cfg.node,
        cfg.source,
        cfg.interval,
        spool.path,
    )
    try:
        if cfg.once:
            agent.tick(force_seal=True)
            left = len(spool)
            if left and not cfg.dry_run:
                log.error("batch not delivered (%s); kept in the spool", agent.last_error)
                return 1
            return 0
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        agent.run(stop=stop)
        log.info("stopped; stats %s", agent.stats().as_dict())
        return 0
    finally:
        source.close()
        spool.close()
