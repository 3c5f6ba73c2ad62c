"""CLI: --once --dry-run, configuration precedence and errors, no Django, replay."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agents.cli import main
from agents.config import ConfigError, load_config
from agents.sim import demo_fleet
from agents.sources.replay import ReplaySource

ROOT = Path(__file__).resolve().parents[2]


def test_once_dry_run_prints_one_batch(capsys):
    assert (
        main(
            [
                "--source",
                "sim",
                "--node",
                "gpu-a-001",
                "--once",
                "--dry-run",
                "--log-level",
                "ERROR",
            ]
        )
        == 0
    )
    payload = json.loads(capsys.readouterr().out)
    assert payload["node"] == "gpu-a-001"
    assert len(payload["gpus"]) == 8
    assert len(payload["series"]) == 8
    assert set(payload["agent"]["stats"]) == {
        "collected",
        "sent",
        "spooled",
        "dropped",
        "last_error",
    }


def test_precedence_flag_env_toml_default(tmp_path):
    toml = tmp_path / "a.toml"
    toml.write_text('interval = 30\nserver = "http://toml"\ntoken = "t"\nspool-max-mb = 5\n')
    env = {"FLOPWATCH_CONFIG": str(toml), "FLOPWATCH_INTERVAL": "20"}
    cfg = load_config(argv=["--interval", "15"], environ=env)
    assert (cfg.interval, cfg.server, cfg.spool_max_mb, cfg.source) == (
        15.0,
        "http://toml",
        5.0,
        "nvml",
    )
    assert load_config(argv=[], environ=env).interval == 20.0
    assert load_config(argv=[], environ={"FLOPWATCH_CONFIG": str(toml)}).interval == 30.0


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["--interval", "-1", "--dry-run"], {}, "--interval"),
        (["--source", "gpu", "--dry-run"], {}, "--source"),
        ([], {}, "--server"),
        (["--server", "http://x"], {}, "--token"),
        (["--dry-run"], {"FLOPWATCH_ONCE": "maybe"}, "FLOPWATCH_ONCE"),
    ],
)
def test_bad_config_names_the_option(argv, env, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(argv=argv, environ=env)


def test_bad_config_exit_code_2_one_line():
    r = subprocess.run(
        [sys.executable, "-m", "agents", "--interval", "abc", "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1
    assert "--interval" in r.stderr


def test_help_and_no_django():
    code = "import sys, agents.cli, agents.sources.nvml, agents.sources.dcgm; assert 'django' not in sys.modules and 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    out = subprocess.run(
        [sys.executable, "-m", "agents", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in (
        "--server",
        "--token",
        "--source",
        "--interval",
        "--spool",
        "--once",
        "--dry-run",
        "--batch-seconds",
        "--config",
        "FLOPWATCH_SPOOL_MAX_MB",
    ):
        assert flag in out


def test_replay_fast_and_shifted(tmp_path):
    f = demo_fleet(seed=3)
    path = tmp_path / "s.csv"
    f.write_csv(path, 1_767_225_600, 1_767_225_600 + 3600, 60)
    src = ReplaySource(path=str(path), speed=0, node="gpu-a-002")
    total = 0
    while not src.exhausted:
        _gpus, rs = src.read(now=0)
        total += len(rs)
    assert total == 8 * 60
    src = ReplaySource(path=str(path), speed=1, shift="now", node="gpu-a-002", clock=lambda: 5000.0)
    _gpus, rs = src.read(now=5000.0)
    assert {r.ts for r in rs} == {5000.0}
    assert all(r.attributed for r in rs)
