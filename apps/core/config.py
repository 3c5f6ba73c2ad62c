"""Strict parsers for settings read from the environment.

Every parser names the variable in its error, so a typo in a deployment fails at start-up with
``FLOPWATCH_RAW_RETENTION_DAYS: expected an integer, got '14d'`` instead of a traceback deep
inside Django. Structured URLs (databases, e-mail) are parsed by django-environ.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import environ
from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class Env:
    """Reads typed values from a mapping (``os.environ`` by default)."""

    def __init__(self, source: Mapping[str, str] | None = None) -> None:
        self.source = os.environ if source is None else source

    def _raw(self, name: str) -> str | None:
        value = self.source.get(name)
        return None if value is None else value.strip()

    def str(self, name: str, default: str) -> str:
        raw = self._raw(name)
        return default if raw is None or raw == "" else raw

    def choice(self, name: str, default: str, *, choices: tuple[str, ...]) -> str:
        value = self.str(name, default)
        if value not in choices:
            raise ImproperlyConfigured(
                f"{name}: expected one of {', '.join(choices)}, got {value!r}"
            )
        return value

    def bool(self, name: str, default: bool) -> bool:
        raw = self._raw(name)
        if raw is None:
            return default
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ImproperlyConfigured(f"{name}: expected true or false, got {raw!r}")

    def int(
        self, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        raw = self._raw(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ImproperlyConfigured(f"{name}: expected an integer, got {raw!r}") from None
        if minimum is not None and value < minimum:
            raise ImproperlyConfigured(f"{name}: must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ImproperlyConfigured(f"{name}: must be at most {maximum}, got {value}")
        return value

    def optional_int(
        self, name: str, *, minimum: int | None = None, maximum: int | None = None
    ) -> int | None:
        """An integer, or None when the variable is unset or empty (the default lies
        elsewhere, e.g. in the database server's own setting)."""
        if not self._raw(name):
            return None
        return self.int(name, 0, minimum=minimum, maximum=maximum)

    def float(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        raw = self._raw(name)
        if raw is None or raw == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ImproperlyConfigured(f"{name}: expected a number, got {raw!r}") from None
        if value != value or value < minimum:
            raise ImproperlyConfigured(f"{name}: must be a number >= {minimum}, got {raw!r}")
        return value

    def decimal(self, name: str, default: str) -> Decimal:
        raw = self.str(name, default)
        try:
            return Decimal(raw)
        except InvalidOperation:
            raise ImproperlyConfigured(f"{name}: expected a decimal number, got {raw!r}") from None

    def list(self, name: str, default: list[str]) -> list[str]:
        raw = self._raw(name)
        if raw is None:
            return default
        return [item.strip() for item in raw.split(",") if item.strip()]

    def timezone(self, name: str, default: str) -> str:
        value = self.str(name, default)
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ImproperlyConfigured(f"{name}: unknown time zone {value!r}") from None
        return value

    def database(self, name: str, default: str) -> dict[str, Any]:
        url = self.str(name, default)
        try:
            config = environ.Env.db_url_config(url)
        except Exception as exc:  # django-environ raises several types for bad URLs
            raise ImproperlyConfigured(f"{name}: cannot parse {url!r}: {exc}") from None
        if not config.get("ENGINE"):
            raise ImproperlyConfigured(f"{name}: unsupported database URL {url!r}")
        engine = config["ENGINE"]
        if engine not in ("django.db.backends.sqlite3", "django.db.backends.postgresql"):
            raise ImproperlyConfigured(
                f"{name}: flopwatch supports postgres:// and sqlite:// URLs, got {url!r}"
            )
        return config

    def email(self, name: str, default: str) -> dict[str, Any]:
        url = self.str(name, default)
        try:
            config = environ.Env.email_url_config(url)
        except Exception as exc:
            raise ImproperlyConfigured(f"{name}: cannot parse {url!r}: {exc}") from None
        if not config.get("EMAIL_BACKEND"):
            raise ImproperlyConfigured(f"{name}: unsupported e-mail URL {url!r}")
        return config

    def redis_url(self, name: str) -> str | None:
        raw = self._raw(name)
        if not raw:
            return None
        if not raw.startswith(("redis://", "rediss://", "unix://")):
            raise ImproperlyConfigured(f"{name}: expected a redis:// or rediss:// URL, got {raw!r}")
        return raw
