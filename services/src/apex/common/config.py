"""Platform settings, read from ``APEX_*`` environment variables.

Every service takes one :class:`Settings`; :meth:`Settings.from_env` is the only
place that reads the environment, and every bad value becomes a
:class:`ConfigError` that names the variable (and the value, unless it is a secret).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import load_pem_private_key

__all__ = ["TIERS", "ConfigError", "RateLimit", "Settings", "parse_rate_limits"]

TIERS: Final = ("free", "pro", "enterprise")
DEFAULT_RATE_LIMITS: Final = "free=10/60,pro=100/60,enterprise=1000/60"
_LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(ValueError):
    """A setting is missing or has a value the platform cannot use."""


@dataclasses.dataclass(frozen=True)
class RateLimit:
    """At most ``count`` events in any sliding window of ``window`` seconds."""

    count: int
    window: int


@dataclasses.dataclass(frozen=True)
class Settings:
    """Configuration shared by every service; secrets are kept out of ``repr``."""

    database_url: str | None = None
    redis_url: str | None = None
    redis_prefix: str = ""
    clickhouse_url: str | None = None
    jwt_private_key: str | None = dataclasses.field(default=None, repr=False)
    jwt_issuer: str = "apex-auth"
    jwt_audience: str = "apex"
    jwt_access_ttl: int = 900
    jwt_refresh_ttl: int = 2_592_000
    admin_token: str | None = dataclasses.field(default=None, repr=False)
    auth_rate_limits: Mapping[str, RateLimit] = dataclasses.field(
        default_factory=lambda: dict(_DEFAULT_LIMITS)
    )
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``environ`` (default: ``os.environ``); ConfigError on bad values."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            # An empty variable means "unset": CI systems and compose files often
            # export empty strings for optional settings.
            value = env.get(name)
            return value if value else None

        access_ttl = _parse_positive_int(get("APEX_JWT_ACCESS_TTL"), "APEX_JWT_ACCESS_TTL", 900)
        refresh_ttl = _parse_positive_int(
            get("APEX_JWT_REFRESH_TTL"), "APEX_JWT_REFRESH_TTL", 2_592_000
        )
        if refresh_ttl < access_ttl:
            raise ConfigError(
                f"APEX_JWT_REFRESH_TTL ({refresh_ttl}) must not be shorter than "
                f"APEX_JWT_ACCESS_TTL ({access_ttl})"
            )
        return cls(
            database_url=_parse_url(
                get("APEX_DATABASE_URL"), "APEX_DATABASE_URL", ("postgresql", "postgres")
            ),
            redis_url=_parse_url(
                get("APEX_REDIS_URL"), "APEX_REDIS_URL", ("redis", "rediss", "unix")
            ),
            redis_prefix=env.get("APEX_REDIS_PREFIX", ""),
            clickhouse_url=_parse_url(
                get("APEX_CLICKHOUSE_URL"), "APEX_CLICKHOUSE_URL", ("clickhouse",)
            ),
            jwt_private_key=_parse_private_key(get("APEX_JWT_PRIVATE_KEY")),
            jwt_issuer=get("APEX_JWT_ISSUER") or "apex-auth",
            jwt_audience=get("APEX_JWT_AUDIENCE") or "apex",
            jwt_access_ttl=access_ttl,
            jwt_refresh_ttl=refresh_ttl,
            admin_token=get("APEX_ADMIN_TOKEN"),
            auth_rate_limits=parse_rate_limits(
                get("APEX_AUTH_RATE_LIMITS") or DEFAULT_RATE_LIMITS, "APEX_AUTH_RATE_LIMITS"
            ),
            log_level=_parse_log_level(get("APEX_LOG_LEVEL")),
        )

    def require(self, field: str, *, service: str) -> str:
        """A setting ``service`` cannot run without; ConfigError naming its variable if unset."""
        value = getattr(self, field)
        if not value:
            raise ConfigError(f"APEX_{field.upper()} is required by {service} but is not set")
        return str(value)


def parse_rate_limits(text: str, variable: str = "APEX_AUTH_RATE_LIMITS") -> dict[str, RateLimit]:
    """Parse ``"free=10/60,pro=100/60"`` into limits per tier; tiers left out keep their default."""
    return {**_DEFAULT_LIMITS, **_parse_limit_items(text, variable)}


def _parse_limit_items(text: str, variable: str) -> dict[str, RateLimit]:
    limits: dict[str, RateLimit] = {}
    for raw_item in text.split(","):
        item = raw_item.strip()
        if not item:
            continue
        tier, sep, spec = item.partition("=")
        count_text, slash, window_text = spec.partition("/")
        tier = tier.strip()
        if not sep or not slash:
            raise ConfigError(
                f"{variable}: {item!r} is not of the form tier=count/seconds (e.g. free=10/60)"
            )
        if tier not in TIERS:
            raise ConfigError(
                f"{variable}: unknown tier {tier!r} in {item!r}; tiers are {', '.join(TIERS)}"
            )
        try:
            count, window = int(count_text), int(window_text)
        except ValueError:
            raise ConfigError(
                f"{variable}: {item!r} needs whole numbers for count and seconds"
            ) from None
        if count < 1 or window < 1:
            raise ConfigError(f"{variable}: {item!r} needs a count and a window of at least 1")
        limits[tier] = RateLimit(count=count, window=window)
    return limits


def _parse_positive_int(value: str | None, variable: str, default: int) -> int:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{variable} must be a whole number of seconds, got {value!r}") from None
    if number < 1:
        raise ConfigError(f"{variable} must be at least 1, got {value!r}")
    return number


def _parse_url(value: str | None, variable: str, schemes: tuple[str, ...]) -> str | None:
    if value is None:
        return None
    # Never echo the URL itself: it may carry a password.
    shown = _redact_url(value)
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{variable} is not a valid URL ({exc}): {shown}") from None
    if parts.scheme not in schemes:
        expected = " or ".join(f"{s}://" for s in schemes)
        raise ConfigError(f"{variable} must start with {expected}, got {shown}")
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError(f"{variable} has no host: {shown}")
    if port == 0:
        raise ConfigError(f"{variable} has port 0: {shown}")
    return value


def _redact_url(value: str) -> str:
    try:
        parts = urlsplit(value)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return repr(value)
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return repr(parts._replace(netloc=netloc).geturl())


@functools.lru_cache(maxsize=8)
def load_private_key(pem: str) -> PrivateKeyTypes:
    """Parse a PEM private key once per process: cryptography validates RSA keys on every
    load (tens of milliseconds), and each app instance needs the key twice."""
    return load_pem_private_key(pem.encode(), password=None)


def _parse_private_key(value: str | None) -> str | None:
    if value is None:
        return None
    # Env files and CI secrets often carry PEM with literal "\n" sequences.
    pem = value.replace("\\n", "\n") if "\n" not in value else value
    try:
        key = load_private_key(pem)
    except (ValueError, TypeError):
        # The key itself is a secret: say what is wrong, never what it is.
        raise ConfigError("APEX_JWT_PRIVATE_KEY is not an unencrypted PEM private key") from None
    if not isinstance(key, RSAPrivateKey):
        raise ConfigError("APEX_JWT_PRIVATE_KEY must be an RSA key (tokens are signed with RS256)")
    if key.key_size < 2048:
        raise ConfigError(
            f"APEX_JWT_PRIVATE_KEY is a {key.key_size}-bit RSA key; RS256 needs at least 2048 bits"
        )
    return pem


def _parse_log_level(value: str | None) -> str:
    if value is None:
        return "INFO"
    level = value.strip().upper()
    if level not in _LOG_LEVELS:
        raise ConfigError(f"APEX_LOG_LEVEL must be one of {', '.join(_LOG_LEVELS)}, got {value!r}")
    return level


_DEFAULT_LIMITS: Final[dict[str, RateLimit]] = _parse_limit_items(
    DEFAULT_RATE_LIMITS, "DEFAULT_RATE_LIMITS"
)
