"""The platform's settings: apex.auth's, and what apex.data and apex.stack read.

:class:`Settings` derives from :class:`apex.common.settings.ServiceSettings` (the fields
every service shares) and adds the signing key, token lifetimes, admin token, rate and
device limits, and the settings of the identity flows and of failover.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from apex.common.settings import (
    HTTP_SCHEMES,
    MIN_EXPIRING_WINDOW,
    ConfigError,
    Env,
    RateLimit,
    ServiceSettings,
    parse_rate,
)

# ConfigError and RateLimit are defined in apex.common.settings; this module is where the
# platform's contract (services/docs/contract-foundation.md) names them.
__all__ = [
    "TIERS",
    "ConfigError",
    "PasswordHashCost",
    "RateLimit",
    "Settings",
    "lifetime",
    "load_private_key",
    "parse_device_limits",
    "parse_rate_limits",
]

TIERS: Final = ("free", "pro", "enterprise")
DEFAULT_RATE_LIMITS: Final = "free=10/60,pro=100/60,enterprise=1000/60"
DEFAULT_API_RATE_LIMITS: Final = "free=100/60,pro=1000/60,enterprise=10000/60"
DEFAULT_DEVICE_LIMITS: Final = "free=2,pro=5,enterprise=20"
DEFAULT_PUBLIC_URL: Final = "http://auth.apex.test"
# RateLimit is frozen: one shared default instance is safe.
_DEFAULT_LOCKOUT: Final = RateLimit(count=5, window=900)
_DEFAULT_MFA_LOCKOUT: Final = RateLimit(count=10, window=3600)
_DEFAULT_SMS_PER_USER: Final = RateLimit(count=10, window=3600)
_DEFAULT_FORGOT_PER_EMAIL: Final = RateLimit(count=3, window=3600)
_DEFAULT_FORGOT_PER_IP: Final = RateLimit(count=30, window=3600)
_DEFAULT_SIGN_IN_PER_IP: Final = RateLimit(count=600, window=600)


@dataclasses.dataclass(frozen=True)
class PasswordHashCost:
    """The argon2id cost of password hashes: passes over memory, KiB of memory, lanes.

    The defaults are argon2-cffi's (RFC 9106's low-memory profile), for production. Test
    environments set cheap values of the same algorithm (as Django's test runner swaps
    its hasher): a stored hash carries its own cost, so any hasher verifies it.
    """

    time_cost: int = 3
    memory_kib: int = 65536
    parallelism: int = 4


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings(ServiceSettings):
    """The platform's settings: apex.auth's, and what apex.data and apex.stack read."""

    clickhouse_url: str | None = None
    jwt_private_key: str | None = dataclasses.field(default=None, repr=False)
    # Whole seconds (ints) unless set to a fraction (a test environment's, to the ms).
    jwt_access_ttl: float = 900
    jwt_refresh_ttl: float = 2_592_000
    admin_token: str | None = dataclasses.field(default=None, repr=False)
    auth_rate_limits: Mapping[str, RateLimit] = dataclasses.field(
        default_factory=lambda: dict(_DEFAULT_LIMITS)
    )
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
    login_lockout: RateLimit = _DEFAULT_LOCKOUT
    password_reset_ttl: float = 900
    password_hash_cost: PasswordHashCost = PasswordHashCost()
    # Issue 3, authorization, limits, resilience (owner B).
    api_rate_limits: Mapping[str, RateLimit] = dataclasses.field(
        default_factory=lambda: dict(_DEFAULT_API_LIMITS)
    )
    failover_max_staleness: float = 300.0
    redis_probe_interval: float = 1.0
    context_token_ttl: int = 60
    # Issue 10, attempt limits and the trust placed in identity providers.
    mfa_lockout: RateLimit = _DEFAULT_MFA_LOCKOUT
    mfa_token_attempts: int = 5
    mfa_sms_per_token: int = 3
    mfa_sms_per_user: RateLimit = _DEFAULT_SMS_PER_USER
    mfa_sms_code_ttl: float = 300
    password_forgot_per_email: RateLimit = _DEFAULT_FORGOT_PER_EMAIL
    password_forgot_per_ip: RateLimit = _DEFAULT_FORGOT_PER_IP
    sign_in_per_ip: RateLimit = _DEFAULT_SIGN_IN_PER_IP
    idp_trusted_domains: frozenset[str] = frozenset()
    saml_trusted_domains: frozenset[str] = frozenset()
    # APEX_PLAN_LIMITS: apex.auth refuses a user over the tenant's plan's seats (402).
    plan_limits: bool = False

    @classmethod
    def _read(cls, env: Env) -> dict[str, Any]:
        access_ttl = _token_ttl(env, "APEX_JWT_ACCESS_TTL", 900)
        refresh_ttl = _token_ttl(env, "APEX_JWT_REFRESH_TTL", 2_592_000)
        if refresh_ttl < access_ttl:
            raise ConfigError(
                f"APEX_JWT_REFRESH_TTL ({refresh_ttl}) must not be shorter than "
                f"APEX_JWT_ACCESS_TTL ({access_ttl})"
            )
        return {
            **super()._read(env),
            "clickhouse_url": env.url("APEX_CLICKHOUSE_URL", ("clickhouse",)),
            "jwt_private_key": _parse_private_key(env.get("APEX_JWT_PRIVATE_KEY")),
            "jwt_access_ttl": access_ttl,
            "jwt_refresh_ttl": refresh_ttl,
            "admin_token": env.get("APEX_ADMIN_TOKEN"),
            "auth_rate_limits": parse_rate_limits(
                env.text("APEX_AUTH_RATE_LIMITS", DEFAULT_RATE_LIMITS), "APEX_AUTH_RATE_LIMITS"
            ),
            **_identity_settings(env),
            **_resilience_settings(env),
            **_security_settings(env),
            "plan_limits": env.switch("APEX_PLAN_LIMITS", False),
        }


def _identity_settings(env: Env) -> dict[str, Any]:
    """The identity-flow settings of apex.auth (issue 3: OIDC, SAML, mail, SMS, logins)."""
    idp = [env.get(f"APEX_IDP_{name}") for name in ("ISSUER", "CLIENT_ID", "CLIENT_SECRET")]
    if any(idp) and not all(idp):
        raise ConfigError(
            "APEX_IDP_ISSUER, APEX_IDP_CLIENT_ID and APEX_IDP_CLIENT_SECRET must be set together"
        )
    return {
        "public_url": (env.url("APEX_PUBLIC_URL", HTTP_SCHEMES) or DEFAULT_PUBLIC_URL).rstrip("/"),
        "idp_issuer": env.url("APEX_IDP_ISSUER", HTTP_SCHEMES),
        "idp_client_id": idp[1],
        "idp_client_secret": idp[2],
        "saml_idp_metadata_url": env.url("APEX_SAML_IDP_METADATA_URL", HTTP_SCHEMES),
        "saml_sp_entity_id": env.text("APEX_SAML_SP_ENTITY_ID", "apex-auth"),
        "smtp_url": env.url("APEX_SMTP_URL", ("smtp",)),
        "mail_from": env.text("APEX_MAIL_FROM", "no-reply@apex.test"),
        "sms_base_url": env.url("APEX_SMS_BASE_URL", HTTP_SCHEMES),
        "sms_account_sid": env.get("APEX_SMS_ACCOUNT_SID"),
        "sms_auth_token": env.get("APEX_SMS_AUTH_TOKEN"),
        "sms_from": env.get("APEX_SMS_FROM"),
        "device_limits": parse_device_limits(env.text("APEX_DEVICE_LIMITS", DEFAULT_DEVICE_LIMITS)),
        "login_lockout": env.rate("APEX_LOGIN_LOCKOUT", "5/900", expiring=True),
        "password_reset_ttl": env.number("APEX_PASSWORD_RESET_TTL", 900, unit="seconds"),
        "password_hash_cost": _password_hash_cost(env),
    }


def _password_hash_cost(env: Env) -> PasswordHashCost:
    """APEX_PASSWORD_HASH_TIME_COST, _MEMORY_KIB and _PARALLELISM (argon2id's parameters)."""
    default = PasswordHashCost()
    cost = PasswordHashCost(
        time_cost=env.whole_number("APEX_PASSWORD_HASH_TIME_COST", default.time_cost),
        memory_kib=env.whole_number("APEX_PASSWORD_HASH_MEMORY_KIB", default.memory_kib),
        parallelism=env.whole_number("APEX_PASSWORD_HASH_PARALLELISM", default.parallelism),
    )
    if cost.memory_kib < 8 * cost.parallelism:
        # argon2 needs 8 KiB per lane; its own error would not name our variables.
        raise ConfigError(
            f"APEX_PASSWORD_HASH_MEMORY_KIB ({cost.memory_kib}) must be at least 8 per lane "
            f"of APEX_PASSWORD_HASH_PARALLELISM ({cost.parallelism})"
        )
    return cost


def _resilience_settings(env: Env) -> dict[str, Any]:
    """apex.auth's API limits, failover and context-token settings (issue 3, owner B)."""
    return {
        "api_rate_limits": {
            **_DEFAULT_API_LIMITS,
            **_parse_limit_items(env.text("APEX_API_RATE_LIMITS", ""), "APEX_API_RATE_LIMITS"),
        },
        "failover_max_staleness": env.number("APEX_FAILOVER_MAX_STALENESS", 300.0, unit="seconds"),
        "redis_probe_interval": env.number("APEX_REDIS_PROBE_INTERVAL", 1.0, unit="seconds"),
        "context_token_ttl": env.whole_number("APEX_CONTEXT_TOKEN_TTL", 60, unit="seconds"),
    }


def _expiry(env: Env, name: str, default: float) -> float:
    """Seconds that Redis expires to the millisecond: at least 0.001."""
    seconds = env.number(name, default, unit="seconds")
    if seconds < MIN_EXPIRING_WINDOW:
        raise ConfigError(
            f"{name} must be at least 0.001 seconds (Redis expires it to the millisecond), "
            f"got {env.get(name)!r}"
        )
    return seconds


def _security_settings(env: Env) -> dict[str, Any]:
    """apex.auth's attempt limits and the domains each IdP may vouch for (issue 10)."""
    return {
        "mfa_lockout": env.rate("APEX_MFA_LOCKOUT", "10/3600", expiring=True),
        "mfa_token_attempts": env.whole_number("APEX_MFA_TOKEN_ATTEMPTS", 5),
        "mfa_sms_per_token": env.whole_number("APEX_MFA_SMS_PER_TOKEN", 3),
        "mfa_sms_per_user": env.rate("APEX_MFA_SMS_PER_USER", "10/3600", expiring=True),
        "mfa_sms_code_ttl": _expiry(env, "APEX_MFA_SMS_CODE_TTL", 300),
        "password_forgot_per_email": env.rate(
            "APEX_PASSWORD_FORGOT_PER_EMAIL", "3/3600", expiring=True
        ),
        "password_forgot_per_ip": env.rate("APEX_PASSWORD_FORGOT_PER_IP", "30/3600", expiring=True),
        "sign_in_per_ip": env.rate("APEX_SIGN_IN_PER_IP", "600/600", expiring=True),
        "idp_trusted_domains": _parse_domains(env, "APEX_IDP_TRUSTED_DOMAINS"),
        "saml_trusted_domains": _parse_domains(env, "APEX_SAML_TRUSTED_DOMAINS"),
    }


_DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}")


def _parse_domains(env: Env, variable: str) -> frozenset[str]:
    """Comma-separated e-mail domains (``example.com,example.org``), lower-cased."""
    domains = set()
    for raw in env.text(variable, "").split(","):
        domain = raw.strip().lower()
        if not domain:
            continue
        if not _DOMAIN.fullmatch(domain):
            raise ConfigError(
                f"{variable}: {raw.strip()!r} is not a domain name (e.g. example.com)"
            )
        domains.add(domain)
    return frozenset(domains)


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
        tier = tier.strip()
        if not sep or "/" not in spec:
            raise ConfigError(
                f"{variable}: {item!r} is not of the form tier=count/seconds (e.g. free=10/60)"
            )
        if tier not in TIERS:
            raise ConfigError(
                f"{variable}: unknown tier {tier!r} in {item!r}; tiers are {', '.join(TIERS)}"
            )
        try:
            limits[tier] = parse_rate(spec, expiring=True)
        except ValueError as exc:
            raise ConfigError(f"{variable}: {item!r} {exc}") from None
    return limits


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


def lifetime(seconds: float) -> float:
    """A token lifetime to the millisecond: an int when whole, so the tokens and answers
    of whole-second lifetimes (production's) carry the integers they always did. RFC 7519
    NumericDates may be fractional: a test environment sets 0.3 s and sees a token expire
    without waiting out whole seconds."""
    value = round(float(seconds), 3)
    return int(value) if value.is_integer() else value


def _token_ttl(env: Env, name: str, default: int) -> float:
    value = lifetime(env.number(name, default, unit="seconds"))
    if value <= 0:
        raise ConfigError(f"{name} must be at least 0.001 seconds, got {env.get(name)!r}")
    return value


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


_DEFAULT_DEVICE_LIMITS: Final[dict[str, int]] = {"free": 2, "pro": 5, "enterprise": 20}
_DEFAULT_LIMITS: Final[dict[str, RateLimit]] = _parse_limit_items(
    DEFAULT_RATE_LIMITS, "DEFAULT_RATE_LIMITS"
)
_DEFAULT_API_LIMITS: Final[dict[str, RateLimit]] = _parse_limit_items(
    DEFAULT_API_RATE_LIMITS, "DEFAULT_API_RATE_LIMITS"
)
