"""The configuration every service shares: what one service resolved, and where services
disagree.

Every service answers ``GET /admin/config`` (admin token) with :func:`config_report`:
for each shared setting (the database, Redis and its key prefix, the JWT issuer and
audience, the admin token, where apex.auth and apex.data are, ``APEX_SETTINGS_VERSION``)
the value it runs with, a secret (or a URL that may carry one) as a fingerprint only.
Services started from one environment must agree on each of them: a gateway that trusts
another issuer, or a data service on another database, breaks in ways no single health
check shows.
:func:`mismatches` compares the reports of several services and :class:`ConfigMismatch`
names each setting they disagree on and which service sees which value
(``apex.stack.consistency`` fetches the reports of running services).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

from apex.common.settings import ServiceSettings

__all__ = [
    "SETTINGS_VERSION",
    "SHARED_SETTINGS",
    "ConfigMismatch",
    "check_reports",
    "config_report",
    "fingerprint",
    "mismatches",
]

# The operator's name for one revision of the environment (a commit, a date): free text.
SETTINGS_VERSION: Final = "APEX_SETTINGS_VERSION"

# Shared setting -> (settings field, whether its value is shown only as a fingerprint).
# A service whose settings have no such field does not report it (apex.auth is not told
# where apex.auth is).
SHARED_SETTINGS: Final[Mapping[str, tuple[str, bool]]] = {
    "APEX_DATABASE_URL": ("database_url", True),
    "APEX_REDIS_URL": ("redis_url", True),
    "APEX_REDIS_PREFIX": ("redis_prefix", False),
    "APEX_JWT_ISSUER": ("jwt_issuer", False),
    "APEX_JWT_AUDIENCE": ("jwt_audience", False),
    "APEX_ADMIN_TOKEN": ("admin_token", True),
    "APEX_AUTH_URL": ("auth_url", False),
    "APEX_DATA_URL": ("data_url", False),
    SETTINGS_VERSION: ("settings_version", False),
}
_FINGERPRINT_HEX: Final = 16


class ConfigMismatch(RuntimeError):
    """Services that should share a configuration disagree on some setting."""


def fingerprint(value: str) -> str:
    """``sha256:<16 hex>`` of ``value``: equal values, equal fingerprints; the value is not
    shown (the report is behind the admin token all the same: a weak password in a URL
    could be guessed from its fingerprint)."""
    digest = hashlib.sha256(value.encode()).hexdigest()[:_FINGERPRINT_HEX]
    return f"sha256:{digest}"


def config_report(service: str, settings: ServiceSettings) -> dict[str, Any]:
    """The body of ``GET /admin/config``: ``{"service", "settings": {variable: value}}``;
    a secret's value is its :func:`fingerprint`, an unset setting is null."""
    shown: dict[str, str | None] = {}
    for variable, (field, secret) in SHARED_SETTINGS.items():
        if not hasattr(settings, field):
            continue
        value = getattr(settings, field)
        if value is None:
            shown[variable] = None
        else:
            shown[variable] = fingerprint(str(value)) if secret else str(value)
    return {"service": service, "settings": shown}


def mismatches(reports: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per shared setting on which the services of ``reports`` (name -> the
    body of its ``/admin/config``) disagree, naming each value and who sees it; empty
    when they agree. A setting only one service reports is nobody's business but its own."""
    lines = []
    for variable in SHARED_SETTINGS:
        seen: dict[str | None, list[str]] = {}
        for name, report in reports.items():
            values = report.get("settings", {})
            if variable in values:
                seen.setdefault(values[variable], []).append(name)
        if len(seen) > 1:
            parts = "; ".join(
                f"{', '.join(names)} {'sees' if len(names) == 1 else 'see'} "
                f"{'unset' if value is None else repr(value)}"
                for value, names in seen.items()
            )
            lines.append(f"{variable} differs: {parts}")
    return lines


def check_reports(reports: Mapping[str, Mapping[str, Any]]) -> None:
    """ConfigMismatch naming every setting the services of ``reports`` disagree on."""
    lines = mismatches(reports)
    if lines:
        services = ", ".join(reports)
        raise ConfigMismatch(
            f"services {services} do not share one configuration:\n  " + "\n  ".join(lines)
        )
