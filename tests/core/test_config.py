"""Settings come from the environment and bad values are refused at start-up, by name."""

import os
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from apps.core.config import Env
from tests.conftest import ROOT


@pytest.mark.parametrize(
    ("method", "args", "raw", "message"),
    [
        ("int", ("FLOPWATCH_X", 1), "14d", "FLOPWATCH_X: expected an integer, got '14d'"),
        ("bool", ("FLOPWATCH_X", True), "maybe", "FLOPWATCH_X: expected true or false"),
        ("float", ("FLOPWATCH_X", 1.0), "nan", "FLOPWATCH_X: must be a number"),
        ("decimal", ("FLOPWATCH_X", "1"), "1,5", "FLOPWATCH_X: expected a decimal number"),
        ("timezone", ("FLOPWATCH_X", "UTC"), "Mars/Olympus", "FLOPWATCH_X: unknown time zone"),
        ("database", ("DATABASE_URL", "sqlite://"), "mysql://x@y/z", "DATABASE_URL:"),
        ("database", ("DATABASE_URL", "sqlite://"), "nonsense", "DATABASE_URL:"),
        ("email", ("EMAIL_URL", "consolemail://"), "carrier-pigeon://x", "EMAIL_URL:"),
        ("redis_url", ("REDIS_URL",), "localhost:6379", "REDIS_URL: expected a redis://"),
    ],
)
def test_bad_values_name_the_variable(method, args, raw, message):
    env = Env({args[0]: raw})
    with pytest.raises(ImproperlyConfigured, match=message.replace("(", r"\(")):
        getattr(env, method)(*args)


def test_int_bounds_and_defaults():
    assert Env({}).int("X", 7) == 7
    assert Env({"X": " 42 "}).int("X", 7) == 42
    with pytest.raises(ImproperlyConfigured, match="X: must be at least 1, got 0"):
        Env({"X": "0"}).int("X", 7, minimum=1)
    assert Env({"X": "off"}).bool("X", True) is False
    assert Env({"X": "a, b,,c"}).list("X", []) == ["a", "b", "c"]
    assert Env({}).optional_int("X") is None
    assert Env({"X": ""}).optional_int("X") is None
    assert Env({"X": "0"}).optional_int("X", minimum=0) == 0
    with pytest.raises(ImproperlyConfigured, match="X: must be at most 64, got 65"):
        Env({"X": "65"}).optional_int("X", maximum=64)


def test_choice_lists_the_choices():
    with pytest.raises(ImproperlyConfigured, match="FLOPWATCH_ENV: expected one of dev, prod"):
        Env({"FLOPWATCH_ENV": "staging"}).choice("FLOPWATCH_ENV", "dev", choices=("dev", "prod"))


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FLOPWATCH_")}
    full_env.pop("DATABASE_URL", None)
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_start_up_fails_naming_the_bad_variable():
    result = _manage("check", FLOPWATCH_RAW_RETENTION_DAYS="two weeks")
    assert result.returncode != 0
    assert "FLOPWATCH_RAW_RETENTION_DAYS: expected an integer, got 'two weeks'" in result.stderr


def test_production_requires_a_real_secret_key():
    result = _manage("check", FLOPWATCH_ENV="production", ALLOWED_HOSTS="gpu.example.com")
    assert result.returncode != 0
    assert "SECRET_KEY: production needs a random key" in result.stderr


def test_check_deploy_is_clean_in_production():
    result = _manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        FLOPWATCH_ENV="production",
        SECRET_KEY="k" * 10 + "Q7x!pZ2@rT9#vL4$wN8%yB1^cF6&hJ3*mK5(sD0)gA-eU+iO=" * 2,
        ALLOWED_HOSTS="gpu.example.com",
    )
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout
