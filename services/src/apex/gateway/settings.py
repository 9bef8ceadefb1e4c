"""Gateway settings, read from ``APEX_*`` environment variables.

:class:`GatewaySettings` derives from :class:`apex.common.settings.ServiceSettings`: the
gateway shares the platform's Redis namespace, database, JWT issuer/audience and log
level with apex.auth (and requires the Redis URL), and adds where auth is
(``APEX_AUTH_URL``), its instance id, the platform's admin token (``APEX_ADMIN_TOKEN``,
which ``/metrics`` and ``/instances`` require) and its own ``APEX_WS_*`` knobs. Bad values
raise :class:`apex.common.settings.ConfigError` naming the variable, like every service.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from typing import Any, Final

from apex.common.settings import (
    HTTP_SCHEMES,
    ConfigError,
    Env,
    RateLimit,
    ServiceSettings,
    missing_setting,
)

__all__ = ["GatewaySettings"]

# RateLimit is frozen: one shared default instance is safe.
_DEFAULT_RATE: Final = RateLimit(20, 1.0)
_DEFAULT_BINARY_RATE: Final = RateLimit(100, 1.0)
_DEFAULT_BREAKER: Final = RateLimit(5, 30.0)
# apex.auth's permission names: "<resource>:<action>".
_PERMISSION: Final = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}:[a-z0-9][a-z0-9_.-]{0,63}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GatewaySettings(ServiceSettings):
    """Everything apex.gateway reads from its environment."""

    redis_url: str
    auth_url: str | None = None
    admin_token: str | None = dataclasses.field(default=None, repr=False)
    instance_id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:12])
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    max_message: int = 65_536
    rate: RateLimit = _DEFAULT_RATE
    binary_rate: RateLimit = _DEFAULT_BINARY_RATE
    rate_violations: int = 10
    send_queue: int = 1000
    compression: bool = True
    max_connections_per_user: int = 20
    replay_buffer: int = 1000
    stream_ttl: int = 86_400
    broadcast_permission: str = "realtime:broadcast"
    drain_timeout: float = 10.0
    shutdown_grace: float = 5.0
    max_upload: int = 10_485_760
    upload_ttl: float = 3600.0
    uploads_per_user: int = 10
    upload_bytes_per_user: int = 52_428_800
    breaker: RateLimit = _DEFAULT_BREAKER
    instance_ttl: float = 5.0
    session_sweep: float = 2.0
    # APEX_PLAN_LIMITS: refuse a connection over the tenant's plan's ws_connections (402).
    plan_limits: bool = False

    @classmethod
    def _read(cls, env: Env) -> dict[str, Any]:
        shared = super()._read(env)
        if shared["redis_url"] is None:
            raise missing_setting("APEX_REDIS_URL", "apex.gateway")
        compression = env.text("APEX_WS_COMPRESSION", "on").strip().lower()
        if compression not in ("on", "off"):
            raise ConfigError(f"APEX_WS_COMPRESSION must be on or off, got {compression!r}")
        auth_url = env.url("APEX_AUTH_URL", HTTP_SCHEMES)
        return {
            **shared,
            "auth_url": auth_url.rstrip("/") if auth_url else None,
            "admin_token": env.get("APEX_ADMIN_TOKEN"),
            "instance_id": _instance_id(env.get("APEX_GATEWAY_INSTANCE_ID")),
            "ping_interval": env.number("APEX_WS_PING_INTERVAL", 20.0),
            "ping_timeout": env.number("APEX_WS_PING_TIMEOUT", 20.0),
            "max_message": env.whole_number("APEX_WS_MAX_MESSAGE", 65_536),
            "rate": env.rate("APEX_WS_RATE", "20/1"),
            "binary_rate": env.rate("APEX_WS_BINARY_RATE", "100/1"),
            "rate_violations": env.whole_number("APEX_WS_RATE_VIOLATIONS", 10),
            "send_queue": env.whole_number("APEX_WS_SEND_QUEUE", 1000),
            "compression": compression == "on",
            "max_connections_per_user": env.whole_number("APEX_WS_MAX_CONNECTIONS_PER_USER", 20),
            "replay_buffer": env.whole_number("APEX_WS_REPLAY_BUFFER", 1000),
            "stream_ttl": env.whole_number("APEX_WS_STREAM_TTL", 86_400, unit="seconds"),
            "broadcast_permission": _permission(env, "APEX_WS_BROADCAST_PERMISSION"),
            "drain_timeout": env.number("APEX_WS_DRAIN_TIMEOUT", 10.0),
            "shutdown_grace": env.number("APEX_WS_SHUTDOWN_GRACE", 5.0, unit="seconds"),
            "max_upload": env.whole_number("APEX_WS_MAX_UPLOAD", 10_485_760),
            "upload_ttl": env.number("APEX_WS_UPLOAD_TTL", 3600.0, unit="seconds"),
            "uploads_per_user": env.whole_number("APEX_WS_UPLOADS_PER_USER", 10),
            "upload_bytes_per_user": env.whole_number(
                "APEX_WS_UPLOAD_BYTES_PER_USER", 52_428_800, unit="bytes"
            ),
            "breaker": env.rate("APEX_WS_BREAKER", "5/30"),
            "instance_ttl": env.number("APEX_WS_INSTANCE_TTL", 5.0),
            "session_sweep": env.number("APEX_WS_SESSION_SWEEP", 2.0, unit="seconds"),
            "plan_limits": env.switch("APEX_PLAN_LIMITS", False),
        }


def _permission(env: Env, variable: str) -> str:
    value = env.text(variable, "realtime:broadcast")
    if not _PERMISSION.fullmatch(value):
        raise ConfigError(
            f"{variable} must be a permission name <resource>:<action> in lower case "
            f"(e.g. realtime:broadcast), got {value!r}"
        )
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
