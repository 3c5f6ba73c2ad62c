"""Agent configuration: flags > ``FLOPWATCH_*`` environment > TOML file > defaults.

Every option is declared once in :data:`OPTIONS` (name, type, default, help); the CLI flags,
environment variables, TOML keys and ``--help`` text are all derived from it, so they cannot
drift apart. A bad value raises :class:`ConfigError` naming the option; the CLI turns it into
a one-line message and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SOURCES = ("nvml", "dcgm", "sim", "replay")
DEFAULT_SPOOL = "/var/lib/flopwatch-agent/spool.sqlite"


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the option."""


def _positive_float(v: Any) -> float:
    f = float(v)
    if not f > 0:
        raise ValueError("must be > 0")
    return f


def _nonneg_float(v: Any) -> float:
    f = float(v)
    if f < 0:
        raise ValueError("must be >= 0")
    return f


def _positive_int(v: Any) -> int:
    if isinstance(v, float) and not v.is_integer():
        raise ValueError("must be a whole number")
    i = int(v)
    if i <= 0:
        raise ValueError("must be > 0")
    return i


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in {"1", "true", "yes", "on"}:
        return True
    if s in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("must be true or false")


def _choice(*choices: str) -> Callable[[Any], str]:
    def conv(v: Any) -> str:
        s = str(v)
        if s not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return s

    return conv


def _str(v: Any) -> str:
    return str(v)


def _level(v: Any) -> str:
    s = str(v).upper()
    if s not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
    return s


@dataclass(frozen=True, slots=True)
class Option:
    name: str  # python name; flag is --name-with-dashes, env FLOPWATCH_NAME, TOML key name
    conv: Callable[[Any], Any]
    default: Any
    help: str
    flag_bool: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "FLOPWATCH_" + self.name.upper()


OPTIONS: tuple[Option, ...] = (
    Option(
        "server",
        _str,
        None,
        "server base URL, e.g. https://flopwatch.example.org (required unless --dry-run)",
    ),
    Option(
        "token",
        _str,
        None,
        "node token sent as 'Authorization: Bearer'; prefer the env var or TOML file (required unless --dry-run)",
    ),
    Option("source", _choice(*SOURCES), "nvml", "where readings come from: " + ", ".join(SOURCES)),
    Option(
        "interval",
        _positive_float,
        10.0,
        "seconds between samples, taken on multiples of it since the epoch (a 10 s agent samples at :00, :10, ...)",
    ),
    Option(
        "batch_seconds",
        _positive_float,
        None,
        "seconds of samples per batch (default: the interval, one sample per GPU per batch)",
    ),
    Option("node", _str, None, "node name sent to the server (default: this host's name)"),
    Option(
        "spool",
        _str,
        DEFAULT_SPOOL,
        "SQLite spool path; falls back to $XDG_STATE_HOME/flopwatch-agent/spool.sqlite (or ~/.local/state/...) when not writable",
    ),
    Option(
        "spool_max_mb",
        _positive_float,
        256.0,
        "spool bound in MiB; oldest batches are dropped (and counted) beyond it",
    ),
    Option(
        "once", _bool, False, "take one sample, send (or print) one batch, exit", flag_bool=True
    ),
    Option(
        "dry_run",
        _bool,
        False,
        "print batches as JSON to stdout instead of spooling and sending",
        flag_bool=True,
    ),
    Option(
        "attribution",
        _str,
        "auto",
        "comma list of attributors: static, slurm, k8s, none; auto = static if --static-map, plus slurm (nvml) or k8s (dcgm)",
    ),
    Option(
        "static_map",
        _str,
        None,
        "JSON/TOML file mapping GPU UUID (or '*') to {name|job, project, user}",
    ),
    Option(
        "dcgm_url",
        _str,
        "http://127.0.0.1:9400/metrics",
        "dcgm-exporter metrics URL (--source dcgm)",
    ),
    Option(
        "replay_file",
        _str,
        None,
        "wide CSV to replay (--source replay; format of manage.py import_samples)",
    ),
    Option("replay_speed", _nonneg_float, 1.0, "replay speed factor; 0 = as fast as possible"),
    Option(
        "replay_shift",
        _choice("original", "now"),
        "original",
        "replay timestamps as recorded, or shifted so the first row is now",
    ),
    Option("sim_seed", _str, "42", "simulator seed (--source sim)"),
    Option(
        "sim_gpus", _positive_int, 8, "GPUs of a simulated node that is not part of the demo fleet"
    ),
    Option("sim_model", _str, "NVIDIA H100 80GB HBM3", "GPU model of such a node"),
    Option("timeout", _positive_float, 30.0, "HTTP timeout in seconds"),
    Option("log_level", _level, "INFO", "DEBUG, INFO, WARNING or ERROR"),
)
BY_NAME = {o.name: o for o in OPTIONS}


@dataclass(slots=True)
class Config:
    server: str | None
    token: str | None
    source: str
    interval: float
    batch_seconds: float | None
    node: str
    spool: str
    spool_max_mb: float
    once: bool
    dry_run: bool
    attribution: str
    static_map: str | None
    dcgm_url: str
    replay_file: str | None
    replay_speed: float
    replay_shift: str
    sim_seed: str
    sim_gpus: int
    sim_model: str
    timeout: float
    log_level: str
    config_file: str | None = None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flopwatch-agent",
        description="flopwatch node agent: samples GPUs, attributes them to jobs, spools and "
        "pushes batches to the flopwatch server. Every flag is also an environment variable "
        "(FLOPWATCH_<NAME>) and a key of the --config TOML file. Precedence: flag > env > "
        "TOML > default.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument(
        "--config",
        metavar="FILE.toml",
        help="TOML file with any of the options below (env FLOPWATCH_CONFIG)",
    )
    for o in OPTIONS:
        default = "" if o.default is None else f" [default: {o.default}]"
        text = f"{o.help} (env {o.env}){default}"
        if o.flag_bool:
            p.add_argument(o.flag, action="store_true", help=text)
        else:
            p.add_argument(o.flag, metavar=o.name.upper(), help=text)
    return p


def _convert(opt: Option, value: Any, origin: str) -> Any:
    try:
        return opt.conv(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{origin}: {exc} (got {value!r})") from None


def load_config(
    *, argv: list[str] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Parse argv/environment/TOML into a :class:`Config`; raises :class:`ConfigError`."""
    environ = os.environ if environ is None else environ
    args = vars(build_parser().parse_args(argv))
    config_file = args.pop("config", None) or environ.get("FLOPWATCH_CONFIG")
    toml: dict[str, Any] = {}
    if config_file:
        try:
            toml = tomllib.loads(Path(config_file).read_text())
        except OSError as exc:
            raise ConfigError(f"--config: cannot read {config_file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--config: {config_file} is not valid TOML: {exc}") from None
        toml = {k.replace("-", "_"): v for k, v in toml.items()}
        unknown = sorted(set(toml) - set(BY_NAME))
        if unknown:
            raise ConfigError(f"--config: unknown key {unknown[0]!r} in {config_file}")
    values: dict[str, Any] = {}
    for o in OPTIONS:
        if o.name in args:
            values[o.name] = _convert(o, args[o.name], o.flag)
        elif o.env in environ:
            values[o.name] = _convert(o, environ[o.env], o.env)
        elif o.name in toml:
            values[o.name] = _convert(o, toml[o.name], f"{o.name} in {config_file}")
        else:
            values[o.name] = o.default
    values["node"] = values["node"] or socket.gethostname()
    cfg = Config(**values, config_file=config_file)
    if not cfg.dry_run:
        if not cfg.server:
            raise ConfigError("--server (FLOPWATCH_SERVER): required unless --dry-run")
        if not cfg.server.startswith(("http://", "https://")):
            raise ConfigError(
                f"--server (FLOPWATCH_SERVER): must start with http:// or https:// (got {cfg.server!r})"
            )
        if not cfg.token:
            raise ConfigError("--token (FLOPWATCH_TOKEN): required unless --dry-run")
    if cfg.source == "replay" and not cfg.replay_file:
        raise ConfigError("--replay-file (FLOPWATCH_REPLAY_FILE): required with --source replay")
    if cfg.batch_seconds is not None and cfg.batch_seconds < cfg.interval:
        raise ConfigError("--batch-seconds (FLOPWATCH_BATCH_SECONDS): must be >= --interval")
    return cfg
