"""Gateway settings, read from ``APEX_*`` environment variables.

The gateway shares the platform's Redis namespace, database and JWT issuer/audience
with apex.auth, and adds its own ``APEX_WS_*`` knobs. Bad values raise
:class:`apex.common.config.ConfigError` naming the variable, like every service.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Callable, Mapping
from typing import Final
from urllib.parse import urlsplit

from apex.common.config import ConfigError

__all__ = ["GatewaySettings", "Rate"]

_LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclasses.dataclass(frozen=True)
class Rate:
    """``count`` events per ``seconds`` (a message rate or breaker threshold/open time)."""

    count: int
    seconds: float


@dataclasses.dataclass(frozen=True)
class GatewaySettings:
    """Everything apex.gateway reads from its environment."""

    redis_url: str
    redis_prefix: str = ""
    database_url: str | None = dataclasses.field(default=None, repr=False)
    auth_url: str | None = None
    jwt_issuer: str = "apex-auth"
    jwt_audience: str = "apex"
    instance_id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:12])
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    max_message: int = 65_536
    rate: Rate = Rate(20, 1.0)
    rate_violations: int = 10
    send_queue: int = 1000
    compression: bool = True
    max_connections_per_user: int = 20
    replay_buffer: int = 1000
    drain_timeout: float = 10.0
    max_upload: int = 10_485_760
    breaker: Rate = Rate(5, 30.0)
    instance_ttl: float = 5.0
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GatewaySettings:
        """Settings from ``environ`` (default ``os.environ``); ConfigError on bad values."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name)
            return value if value else None  # empty means unset, as in apex.common.config

        redis_url = _url(get, "APEX_REDIS_URL", ("redis", "rediss", "unix"))
        if redis_url is None:
            raise ConfigError("APEX_REDIS_URL is required by apex.gateway but is not set")
        log_level = (get("APEX_LOG_LEVEL") or "INFO").strip().upper()
        if log_level not in _LOG_LEVELS:
            raise ConfigError(
                f"APEX_LOG_LEVEL must be one of {', '.join(_LOG_LEVELS)}, "
                f"got {get('APEX_LOG_LEVEL')!r}"
            )
        compression = (get("APEX_WS_COMPRESSION") or "on").strip().lower()
        if compression not in ("on", "off"):
            raise ConfigError(f"APEX_WS_COMPRESSION must be on or off, got {compression!r}")
        auth_url = _url(get, "APEX_AUTH_URL", ("http", "https"))
        return cls(
            redis_url=redis_url,
            redis_prefix=env.get("APEX_REDIS_PREFIX", ""),
            database_url=_url(get, "APEX_DATABASE_URL", ("postgresql", "postgres")),
            auth_url=auth_url.rstrip("/") if auth_url else None,
            jwt_issuer=get("APEX_JWT_ISSUER") or "apex-auth",
            jwt_audience=get("APEX_JWT_AUDIENCE") or "apex",
            instance_id=_instance_id(get("APEX_GATEWAY_INSTANCE_ID")),
            ping_interval=_number(get, "APEX_WS_PING_INTERVAL", 20.0),
            ping_timeout=_number(get, "APEX_WS_PING_TIMEOUT", 20.0),
            max_message=int(_number(get, "APEX_WS_MAX_MESSAGE", 65_536, whole=True)),
            rate=parse_rate(get("APEX_WS_RATE") or "20/1", "APEX_WS_RATE"),
            rate_violations=int(_number(get, "APEX_WS_RATE_VIOLATIONS", 10, whole=True)),
            send_queue=int(_number(get, "APEX_WS_SEND_QUEUE", 1000, whole=True)),
            compression=compression == "on",
            max_connections_per_user=int(
                _number(get, "APEX_WS_MAX_CONNECTIONS_PER_USER", 20, whole=True)
            ),
            replay_buffer=int(_number(get, "APEX_WS_REPLAY_BUFFER", 1000, whole=True)),
            drain_timeout=_number(get, "APEX_WS_DRAIN_TIMEOUT", 10.0),
            max_upload=int(_number(get, "APEX_WS_MAX_UPLOAD", 10_485_760, whole=True)),
            breaker=parse_rate(get("APEX_WS_BREAKER") or "5/30", "APEX_WS_BREAKER"),
            instance_ttl=_number(get, "APEX_WS_INSTANCE_TTL", 5.0),
            log_level=log_level,
        )


def parse_rate(text: str, variable: str) -> Rate:
    """``"20/1"`` -> Rate(20, 1.0): a whole count >= 1 and a positive number of seconds."""
    count_text, slash, seconds_text = text.partition("/")
    try:
        count, seconds = int(count_text), float(seconds_text)
    except ValueError:
        count, seconds = 0, 0.0
    if not slash or count < 1 or not seconds > 0:
        raise ConfigError(
            f"{variable} must be count/seconds with a whole count >= 1 and seconds > 0 "
            f"(e.g. 20/1), got {text!r}"
        )
    return Rate(count, seconds)


def _number(
    get: Callable[[str], str | None], variable: str, default: float, *, whole: bool = False
) -> float:
    text = get(variable)
    if text is None:
        return default
    try:
        value = int(text) if whole else float(text)
    except ValueError:
        kind = "a whole number" if whole else "a number"
        raise ConfigError(f"{variable} must be {kind}, got {text!r}") from None
    if not value > 0:
        raise ConfigError(f"{variable} must be greater than 0, got {text!r}")
    return value


def _url(get: Callable[[str], str | None], variable: str, schemes: tuple[str, ...]) -> str | None:
    value = get(variable)
    if value is None:
        return None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigError(f"{variable} is not a valid URL ({exc})") from None
    if parts.scheme not in schemes:
        expected = " or ".join(f"{s}://" for s in schemes)
        # The URL itself is not echoed: it may carry a password.
        raise ConfigError(f"{variable} must start with {expected}")
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError(f"{variable} has no host")
    return value


def _instance_id(value: str | None) -> str:
    if value is None:
        return uuid.uuid4().hex[:12]
    if len(value) > 64 or not all(ch.isalnum() or ch in "-_." for ch in value):
        raise ConfigError(
            f"APEX_GATEWAY_INSTANCE_ID must be 1..64 letters, digits, '-', '_' or '.', "
            f"got {value!r}"
        )
    return value
