"""apex.data's settings, read from ``APEX_*`` environment variables.

:class:`DataSettings` derives from :class:`apex.common.settings.ServiceSettings`: the data
service shares the platform's Redis namespace, database, JWT issuer and log level with the
other services (and requires the database and Redis URLs), and adds where apex.auth is
(``APEX_AUTH_URL``, whose JWKS verifies context tokens), ClickHouse, the read replica, its
pool, retry, cache and outbox knobs, and the admin token. Every window is a float of
seconds. Bad values raise :class:`apex.common.settings.ConfigError` naming the variable.
The table of settings is in ``services/docs/contract-data.md``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Final

from apex.common.settings import (
    HTTP_SCHEMES,
    ConfigError,
    Env,
    ServiceSettings,
    missing_setting,
)

__all__ = ["Backoff", "DataSettings"]

SERVICE: Final = "apex.data"
_REDIS_SCHEMES: Final = ("redis", "rediss", "unix")
_CLICKHOUSE_SCHEMES: Final = ("clickhouse",)


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base*2^n))."""

    base: float
    cap: float


_DEFAULT_BACKOFF: Final = Backoff(0.05, 1.0)
_MIN_SECRET: Final = 16


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataSettings(ServiceSettings):
    """Everything apex.data reads from its environment."""

    redis_url: str
    database_url: str = dataclasses.field(repr=False)
    auth_url: str
    clickhouse_url: str | None = dataclasses.field(default=None, repr=False)
    admin_token: str | None = dataclasses.field(default=None, repr=False)
    # The usage writers' service credential (apex.agents'): unset, only context tokens.
    usage_token: str | None = dataclasses.field(default=None, repr=False)
    replica_url: str | None = dataclasses.field(default=None, repr=False)
    replica_max_lag_bytes: int = 16_777_216
    replica_lag_check: float = 1.0
    pool_size: int = 10
    pool_timeout: float = 5.0
    statement_timeout: float = 30.0
    retries: int = 3
    retry_backoff: Backoff = _DEFAULT_BACKOFF
    connect_deadline: float = 30.0
    migration_lock_timeout: float = 5.0
    cache_redis_urls: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    cache_ttl: float = 300.0
    cache_lock_ttl: float = 5.0
    cache_memory_alert: float = 0.9
    cache_warm_interval: float = 0.0
    cache_warm_top: int = 100
    outbox_batch: int = 500
    outbox_poll: float = 0.5
    # -- data-flow: whether this instance runs the outbox relay in the background ------
    outbox_relay: bool = True

    @classmethod
    def _read(cls, env: Env) -> dict[str, Any]:
        shared = super()._read(env)
        if shared["database_url"] is None:
            raise missing_setting("APEX_DATABASE_URL", SERVICE)
        if shared["redis_url"] is None:
            raise missing_setting("APEX_REDIS_URL", SERVICE)
        auth_url = env.url("APEX_AUTH_URL", HTTP_SCHEMES)
        if auth_url is None:
            raise missing_setting("APEX_AUTH_URL", SERVICE)
        return {
            **shared,
            "auth_url": auth_url.rstrip("/"),
            "clickhouse_url": env.url("APEX_CLICKHOUSE_URL", _CLICKHOUSE_SCHEMES),
            "admin_token": env.get("APEX_ADMIN_TOKEN"),
            "usage_token": _secret(env, "APEX_USAGE_TOKEN"),
            "replica_url": env.postgres_url("APEX_DATABASE_REPLICA_URL"),
            "replica_max_lag_bytes": env.whole_number(
                "APEX_REPLICA_MAX_LAG_BYTES", 16_777_216, unit="bytes"
            ),
            "replica_lag_check": env.number("APEX_REPLICA_LAG_CHECK", 1.0, unit="seconds"),
            "pool_size": env.whole_number("APEX_DB_POOL_SIZE", 10, unit="connections"),
            "pool_timeout": env.number("APEX_DB_POOL_TIMEOUT", 5.0, unit="seconds"),
            "statement_timeout": env.number("APEX_DB_STATEMENT_TIMEOUT", 30.0, unit="seconds"),
            "retries": env.whole_number("APEX_DB_RETRIES", 3, unit="attempts"),
            "retry_backoff": _backoff(env, "APEX_DB_RETRY_BACKOFF"),
            "connect_deadline": env.number("APEX_DB_CONNECT_DEADLINE", 30.0, unit="seconds"),
            "migration_lock_timeout": env.number(
                "APEX_MIGRATION_LOCK_TIMEOUT", 5.0, unit="seconds"
            ),
            "cache_redis_urls": _redis_urls(env, "APEX_CACHE_REDIS_URLS", shared["redis_url"]),
            "cache_ttl": env.number("APEX_CACHE_TTL", 300.0, unit="seconds"),
            "cache_lock_ttl": env.number("APEX_CACHE_LOCK_TTL", 5.0, unit="seconds"),
            "cache_memory_alert": _fraction(env, "APEX_CACHE_MEMORY_ALERT", 0.9),
            # Unset: no scheduled warming (POST /admin/cache/warm still warms on request).
            "cache_warm_interval": env.number("APEX_CACHE_WARM_INTERVAL", 0.0, unit="seconds"),
            "cache_warm_top": env.whole_number("APEX_CACHE_WARM_TOP", 100, unit="tenants"),
            "outbox_batch": env.whole_number("APEX_OUTBOX_BATCH", 500, unit="rows"),
            "outbox_poll": env.number("APEX_OUTBOX_POLL", 0.5, unit="seconds"),
            # -- data-flow ---------------------------------------------------------------
            "outbox_relay": _switch(env, "APEX_OUTBOX_RELAY", default=True),
        }


def _secret(env: Env, variable: str) -> str | None:
    """A shared secret: unset, or at least 16 characters (a short one is guessable)."""
    value = env.get(variable)
    if value is not None and len(value) < _MIN_SECRET:
        raise ConfigError(f"{variable} must be at least {_MIN_SECRET} characters")
    return value


def _fraction(env: Env, variable: str, default: float) -> float:
    value = env.number(variable, default)
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"{variable}: {value} is not a fraction in (0, 1]")
    return value


def _switch(env: Env, variable: str, *, default: bool) -> bool:
    """``on``/``off`` (also true/false, 1/0, yes/no); unset: ``default``."""
    text = env.get(variable)
    if text is None:
        return default
    value = text.strip().lower()
    if value in ("on", "true", "1", "yes"):
        return True
    if value in ("off", "false", "0", "no"):
        return False
    raise ConfigError(f"{variable} must be on or off, got {text!r}")


def _backoff(env: Env, variable: str) -> Backoff:
    """``base/cap`` seconds, 0 < base <= cap, both finite."""
    text = env.get(variable)
    if text is None:
        return _DEFAULT_BACKOFF
    base_text, slash, cap_text = text.partition("/")
    try:
        base, cap = float(base_text), float(cap_text)
    except ValueError:
        base = cap = math.nan
    if not slash or not (0 < base <= cap < math.inf):
        raise ConfigError(
            f"{variable} must be base/cap seconds with 0 < base <= cap (e.g. 0.05/1.0), "
            f"got {text!r}"
        )
    return Backoff(base, cap)


def _redis_urls(env: Env, variable: str, default: str) -> tuple[str, ...]:
    """Comma-separated Redis URLs (each checked like APEX_REDIS_URL); default: ``default``."""
    text = env.get(variable)
    if text is None:
        return (default,)
    urls = tuple(part.strip() for part in text.split(","))
    if any(not url for url in urls):
        raise ConfigError(f"{variable} has an empty entry: give comma-separated redis:// URLs")
    for index, url in enumerate(urls):
        Env({f"{variable}[{index}]": url}).url(f"{variable}[{index}]", _REDIS_SCHEMES)
    if len(set(urls)) != len(urls):
        raise ConfigError(f"{variable} names the same Redis node twice")
    return urls
