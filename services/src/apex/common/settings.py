"""The base of every service's settings, and the one set of parsers for ``APEX_*``.

:class:`ServiceSettings` holds the fields all services share (Redis, PostgreSQL, JWT
issuer and audience, log level, settings version) and ``from_env``, the only place that
reads the environment. A service's settings derive from it and add their own fields
(``apex.common.config.Settings``: the platform's and apex.auth's;
``apex.gateway.GatewaySettings``: the gateway's), read with :class:`Env`, whose parsers
turn every bad value into a :class:`ConfigError` that names the variable (and the
value, unless it is a secret). :class:`RateLimit` is the one rate type.
``apex.common.config`` exports ConfigError and RateLimit too: the platform's contract
names them there.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from typing import Any, Final, Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "HTTP_SCHEMES",
    "MIN_EXPIRING_WINDOW",
    "ConfigError",
    "Env",
    "RateLimit",
    "ServiceSettings",
    "missing_setting",
    "parse_rate",
]

HTTP_SCHEMES: Final = ("http", "https")
_POSTGRES_SCHEMES: Final = ("postgresql", "postgres")
_REDIS_SCHEMES: Final = ("redis", "rediss", "unix")
_LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_Number = TypeVar("_Number", int, float)


class ConfigError(ValueError):
    """A setting is missing or has a value the platform cannot use."""


def missing_setting(variable: str, service: str) -> ConfigError:
    """The error for a setting ``service`` cannot run without."""
    return ConfigError(f"{variable} is required by {service} but is not set")


# -- the rate type --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RateLimit:
    """``count`` events per ``window`` seconds: a sliding-window limit, a message rate, a
    breaker's threshold and open time. A whole number of seconds stays an int (``"5/900"``
    -> ``RateLimit(5, 900)``), so answers that show the window keep showing ``900``."""

    count: int
    window: float

    @property
    def window_ms(self) -> int:
        """The window in whole milliseconds, rounded up (what PEXPIRE / PX take)."""
        return max(1, math.ceil(self.window * 1000))


# The shortest window Redis can expire (PEXPIRE counts milliseconds).
MIN_EXPIRING_WINDOW: Final = 0.001


def parse_rate(text: str, *, expiring: bool = False) -> RateLimit:
    """``"20/1"`` -> RateLimit(20, 1), ``"5/0.25"`` -> RateLimit(5, 0.25): a whole count >= 1
    and a finite number of seconds > 0 (expiring, for the windows Redis expires: at least
    0.001, one millisecond; shorter would expire at once). ValueError says what is wrong;
    the caller names the setting."""
    count_text, slash, window_text = text.partition("/")
    if not slash:
        raise ValueError("is not of the form count/seconds")
    try:
        count = int(count_text)
        window: float = float(window_text)
    except ValueError:
        raise ValueError("needs a whole count and a number of seconds") from None
    if count < 1:
        raise ValueError("needs a count of at least 1")
    long_enough = window >= MIN_EXPIRING_WINDOW if expiring else window > 0
    if not (long_enough and window < math.inf):  # NaN fails both
        raise ValueError(
            "needs a finite window of at least 0.001 seconds (one millisecond)"
            if expiring
            else "needs a finite window of more than 0 seconds"
        )
    return RateLimit(count=count, window=int(window) if window.is_integer() else window)


# -- the parsers ------------------------------------------------------------------------


class Env:
    """The ``APEX_*`` variables of one environment, read with the platform's parsers.

    An empty variable means "unset": CI systems and compose files often export empty
    strings for optional settings. Each parser returns the default for an unset
    variable and raises ConfigError, naming the variable, for a bad value.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def get(self, name: str) -> str | None:
        """The value of ``name``, None when unset or empty."""
        value = self._environ.get(name)
        return value if value else None

    def text(self, name: str, default: str) -> str:
        """The value of ``name``, or ``default`` when unset or empty."""
        return self.get(name) or default

    def raw(self, name: str, default: str = "") -> str:
        """The value of ``name`` as it is (empty included), or ``default`` when unset."""
        return self._environ.get(name, default)

    def switch(self, name: str, default: bool) -> bool:
        """``on`` or ``off`` (any case); ConfigError naming the variable for anything else."""
        value = self.text(name, "on" if default else "off").strip().lower()
        if value not in ("on", "off"):
            raise ConfigError(f"{name} must be on or off, got {value!r}")
        return value == "on"

    def url(self, name: str, schemes: tuple[str, ...]) -> str | None:
        """A URL with one of ``schemes`` and a host (a unix:// URL needs none)."""
        value = self.get(name)
        if value is None:
            return None
        # Never echo the URL itself: it may carry a password.
        shown = _redact_url(value)
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"{name} is not a valid URL ({exc}): {shown}") from None
        if parts.scheme not in schemes:
            expected = " or ".join(f"{s}://" for s in schemes)
            raise ConfigError(f"{name} must start with {expected}, got {shown}")
        if parts.scheme != "unix" and not parts.hostname:
            raise ConfigError(f"{name} has no host: {shown}")
        if port == 0:
            raise ConfigError(f"{name} has port 0: {shown}")
        return value

    def postgres_url(self, name: str) -> str | None:
        """A PostgreSQL URL; several hosts are allowed (``postgresql://u@h1:5432,h2:5433/db
        ?target_session_attrs=read-write``: libpq's and asyncpg's failover form), each
        host checked like a URL's."""
        value = self.get(name)
        if value is None:
            return None
        parts = urlsplit(value)
        hosts = parts.netloc.rpartition("@")[2]
        if "," not in hosts:
            return self.url(name, _POSTGRES_SCHEMES)
        userinfo = parts.netloc[: len(parts.netloc) - len(hosts)]
        for index, host in enumerate(hosts.split(",")):
            single = urlunsplit(parts._replace(netloc=f"{userinfo}{host}"))
            try:
                Env({name: single}).url(name, _POSTGRES_SCHEMES)
            except ConfigError as exc:
                raise ConfigError(f"{exc} (host {index + 1} of {name})") from None
        return value

    def number(self, name: str, default: float, *, unit: str | None = None) -> float:
        """A finite number > 0 (of ``unit``, which the messages name)."""
        bound = f"a positive number of {unit}" if unit else "greater than 0"
        value = self._positive(name, float, _kind("a number", unit), bound)
        if value == math.inf:
            raise ConfigError(f"{name} must be a finite number, got {self.get(name)!r}")
        return default if value is None else value

    def whole_number(self, name: str, default: int, *, unit: str | None = None) -> int:
        """A whole number >= 1 (of ``unit``, which the messages name)."""
        bound = "at least 1" if unit else "greater than 0"
        value = self._positive(name, int, _kind("a whole number", unit), bound)
        return default if value is None else value

    def _positive(
        self, name: str, convert: Callable[[str], _Number], kind: str, bound: str
    ) -> _Number | None:
        """``convert(value)`` if it is > 0, None when unset; messages say ``kind``/``bound``."""
        text = self.get(name)
        if text is None:
            return None
        try:
            value = convert(text)
        except ValueError:
            raise ConfigError(f"{name} must be {kind}, got {text!r}") from None
        if not value > 0:
            raise ConfigError(f"{name} must be {bound}, got {text!r}")
        return value

    def rate(self, name: str, default: str, *, expiring: bool = False) -> RateLimit:
        """``count/seconds`` (see :func:`parse_rate`); ``default`` is also the example."""
        text = self.text(name, default)
        try:
            return parse_rate(text, expiring=expiring)
        except ValueError:
            seconds = "seconds >= 0.001 (milliseconds count)" if expiring else "seconds > 0"
            raise ConfigError(
                f"{name} must be count/seconds with a whole count >= 1 and {seconds} "
                f"(e.g. {default}), got {text!r}"
            ) from None

    def log_level(self, name: str = "APEX_LOG_LEVEL") -> str:
        """One of DEBUG, INFO, WARNING, ERROR, CRITICAL (any case); default INFO."""
        value = self.get(name)
        if value is None:
            return "INFO"
        level = value.strip().upper()
        if level not in _LOG_LEVELS:
            raise ConfigError(f"{name} must be one of {', '.join(_LOG_LEVELS)}, got {value!r}")
        return level


def _kind(what: str, unit: str | None) -> str:
    return f"{what} of {unit}" if unit else what


def _redact_url(value: str) -> str:
    try:
        parts = urlsplit(value)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return repr(value)
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return repr(parts._replace(netloc=netloc).geturl())


# -- the base of every service's settings ----------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServiceSettings:
    """What every service reads; secrets (and URLs that may carry them) stay out of repr.

    A subclass adds its fields and extends :meth:`_read` with them.
    """

    redis_url: str | None = None
    redis_prefix: str = ""
    database_url: str | None = dataclasses.field(default=None, repr=False)
    jwt_issuer: str = "apex-auth"
    jwt_audience: str = "apex"
    log_level: str = "INFO"
    # APEX_SETTINGS_VERSION: the operator's name for this revision of the environment
    # (free text), reported by GET /admin/config so a rollout can be seen to be complete.
    settings_version: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """Settings from ``environ`` (default: ``os.environ``); ConfigError on bad values."""
        return cls(**cls._read(Env(os.environ if environ is None else environ)))

    @classmethod
    def _read(cls, env: Env) -> dict[str, Any]:
        """The constructor's arguments, read from ``env``."""
        return {
            "redis_url": env.url("APEX_REDIS_URL", _REDIS_SCHEMES),
            "redis_prefix": env.raw("APEX_REDIS_PREFIX"),
            "database_url": env.postgres_url("APEX_DATABASE_URL"),
            "jwt_issuer": env.text("APEX_JWT_ISSUER", "apex-auth"),
            "jwt_audience": env.text("APEX_JWT_AUDIENCE", "apex"),
            "log_level": env.log_level(),
            "settings_version": env.get("APEX_SETTINGS_VERSION"),
        }

    def require(self, field: str, *, service: str) -> str:
        """A setting ``service`` cannot run without; ConfigError naming its variable if unset."""
        value = getattr(self, field)
        if not value:
            raise missing_setting(f"APEX_{field.upper()}", service)
        return str(value)
