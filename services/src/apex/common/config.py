"""Platform settings, read from ``APEX_*`` environment variables.

Every service takes one :class:`Settings`; :meth:`Settings.from_env` is the only
place that reads the environment, and every bad value becomes a
:class:`ConfigError` that names the variable (and the value, unless it is a secret).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import load_pem_private_key

__all__ = ["TIERS", "ConfigError", "RateLimit", "Settings", "parse_rate_limits"]

TIERS: Final = ("free", "pro", "enterprise")
DEFAULT_RATE_LIMITS: Final = "free=10/60,pro=100/60,enterprise=1000/60"
DEFAULT_DEVICE_LIMITS: Final = "free=2,pro=5,enterprise=20"
DEFAULT_PUBLIC_URL: Final = "http://auth.apex.test"
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
    # Issue 3, identity flows (owner A).
    public_url: str = DEFAULT_PUBLIC_URL
    idp_issuer: str | None = None
    idp_client_id: str | None = None
    idp_client_secret: str | None = dataclasses.field(default=None, repr=False)
    saml_idp_metadata_url: str | None = None
    saml_sp_entity_id: str = "apex-auth"
    smtp_url: str | None = None
    mail_from: str = "no-reply@apex.test"
    sms_base_url: str | None = None
    sms_account_sid: str | None = None
    sms_auth_token: str | None = dataclasses.field(default=None, repr=False)
    sms_from: str | None = None
    device_limits: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: dict(_DEFAULT_DEVICE_LIMITS)
    )
    login_lockout: RateLimit = RateLimit(count=5, window=900)
    password_reset_ttl: int = 900
    # Issue 3, authorization, limits, resilience (owner B).
    api_rate_limits: Mapping[str, RateLimit] = dataclasses.field(
        default_factory=lambda: dict(_DEFAULT_API_LIMITS)
    )
    failover_max_staleness: float = 300.0
    redis_probe_interval: float = 1.0
    context_token_ttl: int = 60
    # Issue 10, attempt limits and the trust placed in identity providers.
    mfa_lockout: RateLimit = RateLimit(count=10, window=3600)
    mfa_token_attempts: int = 5
    mfa_sms_per_token: int = 3
    mfa_sms_per_user: RateLimit = RateLimit(count=10, window=3600)
    password_forgot_per_email: RateLimit = RateLimit(count=3, window=3600)
    password_forgot_per_ip: RateLimit = RateLimit(count=30, window=3600)
    idp_trusted_domains: frozenset[str] = frozenset()
    saml_trusted_domains: frozenset[str] = frozenset()

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
            **_identity_settings(get),
            **_resilience_settings(get),
            **_security_settings(get),
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


def _identity_settings(get: Callable[[str], str | None]) -> dict[str, Any]:
    """The identity-flow settings of apex.auth (issue 3: OIDC, SAML, mail, SMS, logins)."""
    idp = [get(f"APEX_IDP_{name}") for name in ("ISSUER", "CLIENT_ID", "CLIENT_SECRET")]
    if any(idp) and not all(idp):
        raise ConfigError(
            "APEX_IDP_ISSUER, APEX_IDP_CLIENT_ID and APEX_IDP_CLIENT_SECRET must be set together"
        )
    http = ("http", "https")
    return {
        "public_url": (
            _parse_url(get("APEX_PUBLIC_URL"), "APEX_PUBLIC_URL", http) or DEFAULT_PUBLIC_URL
        ).rstrip("/"),
        "idp_issuer": _parse_url(idp[0], "APEX_IDP_ISSUER", http),
        "idp_client_id": idp[1],
        "idp_client_secret": idp[2],
        "saml_idp_metadata_url": _parse_url(
            get("APEX_SAML_IDP_METADATA_URL"), "APEX_SAML_IDP_METADATA_URL", http
        ),
        "saml_sp_entity_id": get("APEX_SAML_SP_ENTITY_ID") or "apex-auth",
        "smtp_url": _parse_url(get("APEX_SMTP_URL"), "APEX_SMTP_URL", ("smtp",)),
        "mail_from": get("APEX_MAIL_FROM") or "no-reply@apex.test",
        "sms_base_url": _parse_url(get("APEX_SMS_BASE_URL"), "APEX_SMS_BASE_URL", http),
        "sms_account_sid": get("APEX_SMS_ACCOUNT_SID"),
        "sms_auth_token": get("APEX_SMS_AUTH_TOKEN"),
        "sms_from": get("APEX_SMS_FROM"),
        "device_limits": parse_device_limits(get("APEX_DEVICE_LIMITS") or DEFAULT_DEVICE_LIMITS),
        "login_lockout": _parse_count_per_window(
            get("APEX_LOGIN_LOCKOUT"), "APEX_LOGIN_LOCKOUT", RateLimit(count=5, window=900)
        ),
        "password_reset_ttl": _parse_positive_int(
            get("APEX_PASSWORD_RESET_TTL"), "APEX_PASSWORD_RESET_TTL", 900
        ),
    }


def parse_device_limits(text: str, variable: str = "APEX_DEVICE_LIMITS") -> dict[str, int]:
    """Parse ``"free=2,pro=5"`` into live sessions per tier; tiers left out keep their default."""
    limits: dict[str, int] = {}
    for raw_item in text.split(","):
        item = raw_item.strip()
        if not item:
            continue
        tier, sep, count_text = (part.strip() for part in item.partition("="))
        if not sep or tier not in TIERS:
            raise ConfigError(
                f"{variable}: {item!r} is not tier=count with a tier among {', '.join(TIERS)}"
            )
        try:
            count = int(count_text)
        except ValueError:
            count = 0
        if count < 1:
            raise ConfigError(f"{variable}: {item!r} needs a whole number of sessions, at least 1")
        limits[tier] = count
    return {**_DEFAULT_DEVICE_LIMITS, **limits}


def _resilience_settings(get: Callable[[str], str | None]) -> dict[str, Any]:
    """apex.auth's API limits, failover and context-token settings (issue 3, owner B)."""
    return {
        "api_rate_limits": {
            **_DEFAULT_API_LIMITS,
            **_parse_limit_items(get("APEX_API_RATE_LIMITS") or "", "APEX_API_RATE_LIMITS"),
        },
        "failover_max_staleness": _parse_positive_seconds(
            get("APEX_FAILOVER_MAX_STALENESS"), "APEX_FAILOVER_MAX_STALENESS", 300.0
        ),
        "redis_probe_interval": _parse_positive_seconds(
            get("APEX_REDIS_PROBE_INTERVAL"), "APEX_REDIS_PROBE_INTERVAL", 1.0
        ),
        "context_token_ttl": _parse_positive_int(
            get("APEX_CONTEXT_TOKEN_TTL"), "APEX_CONTEXT_TOKEN_TTL", 60
        ),
    }


def _security_settings(get: Callable[[str], str | None]) -> dict[str, Any]:
    """apex.auth's attempt limits and the domains each IdP may vouch for (issue 10)."""
    return {
        "mfa_lockout": _parse_count_per_window(
            get("APEX_MFA_LOCKOUT"), "APEX_MFA_LOCKOUT", RateLimit(count=10, window=3600)
        ),
        "mfa_token_attempts": _parse_count(
            get("APEX_MFA_TOKEN_ATTEMPTS"), "APEX_MFA_TOKEN_ATTEMPTS", 5
        ),
        "mfa_sms_per_token": _parse_count(
            get("APEX_MFA_SMS_PER_TOKEN"), "APEX_MFA_SMS_PER_TOKEN", 3
        ),
        "mfa_sms_per_user": _parse_count_per_window(
            get("APEX_MFA_SMS_PER_USER"), "APEX_MFA_SMS_PER_USER", RateLimit(count=10, window=3600)
        ),
        "password_forgot_per_email": _parse_count_per_window(
            get("APEX_PASSWORD_FORGOT_PER_EMAIL"),
            "APEX_PASSWORD_FORGOT_PER_EMAIL",
            RateLimit(count=3, window=3600),
        ),
        "password_forgot_per_ip": _parse_count_per_window(
            get("APEX_PASSWORD_FORGOT_PER_IP"),
            "APEX_PASSWORD_FORGOT_PER_IP",
            RateLimit(count=30, window=3600),
        ),
        "idp_trusted_domains": _parse_domains(
            get("APEX_IDP_TRUSTED_DOMAINS"), "APEX_IDP_TRUSTED_DOMAINS"
        ),
        "saml_trusted_domains": _parse_domains(
            get("APEX_SAML_TRUSTED_DOMAINS"), "APEX_SAML_TRUSTED_DOMAINS"
        ),
    }


def _parse_count_per_window(value: str | None, variable: str, default: RateLimit) -> RateLimit:
    """``"count/seconds"`` (e.g. ``5/900``) with both at least 1."""
    if value is None:
        return default
    count_text, slash, window_text = value.partition("/")
    try:
        limit = RateLimit(count=int(count_text), window=int(window_text))
    except ValueError:
        limit = RateLimit(0, 0)
    if not slash or limit.count < 1 or limit.window < 1:
        raise ConfigError(
            f"{variable} must be count/seconds with both at least 1 "
            f"(e.g. {default.count}/{default.window}), got {value!r}"
        )
    return limit


def _parse_count(value: str | None, variable: str, default: int) -> int:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{variable} must be a whole number, got {value!r}") from None
    if number < 1:
        raise ConfigError(f"{variable} must be at least 1, got {value!r}")
    return number


_DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}")


def _parse_domains(value: str | None, variable: str) -> frozenset[str]:
    """Comma-separated e-mail domains (``example.com,example.org``), lower-cased."""
    domains = set()
    for raw in (value or "").split(","):
        domain = raw.strip().lower()
        if not domain:
            continue
        if not _DOMAIN.fullmatch(domain):
            raise ConfigError(
                f"{variable}: {raw.strip()!r} is not a domain name (e.g. example.com)"
            )
        domains.add(domain)
    return frozenset(domains)


def _parse_positive_seconds(value: str | None, variable: str, default: float) -> float:
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{variable} must be a number of seconds, got {value!r}") from None
    if not 0 < number < float("inf"):
        raise ConfigError(f"{variable} must be a positive number of seconds, got {value!r}")
    return number


_DEFAULT_DEVICE_LIMITS: Final[dict[str, int]] = {"free": 2, "pro": 5, "enterprise": 20}
_DEFAULT_LIMITS: Final[dict[str, RateLimit]] = _parse_limit_items(
    DEFAULT_RATE_LIMITS, "DEFAULT_RATE_LIMITS"
)
DEFAULT_API_RATE_LIMITS: Final = "free=100/60,pro=1000/60,enterprise=10000/60"
_DEFAULT_API_LIMITS: Final[dict[str, RateLimit]] = _parse_limit_items(
    DEFAULT_API_RATE_LIMITS, "DEFAULT_API_RATE_LIMITS"
)
