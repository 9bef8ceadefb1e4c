"""apex.billing's settings, read from ``APEX_*`` environment variables.

:class:`BillingSettings` derives from :class:`apex.common.settings.ServiceSettings` and
adds where apex.auth and apex.data are, the payment provider (its API base, secret key,
webhook secret, timeout and retry delay), the webhook tolerance and the plan table. A
bad value raises :class:`apex.common.settings.ConfigError` naming the variable. The
table of settings is in ``services/docs/contract-billing.md``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Final

from apex.billing.plans import DEFAULT_PLANS, Plan, parse_plans
from apex.common.settings import HTTP_SCHEMES, Env, ServiceSettings, missing_setting

__all__ = ["SERVICE", "BillingSettings"]

SERVICE: Final = "apex.billing"
CLICKHOUSE_SCHEMES: Final = ("clickhouse",)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BillingSettings(ServiceSettings):
    """Everything apex.billing reads from its environment."""

    redis_url: str
    database_url: str = dataclasses.field(repr=False)
    auth_url: str
    data_url: str | None = None
    admin_token: str | None = dataclasses.field(default=None, repr=False)
    payments_base_url: str
    payments_api_key: str = dataclasses.field(repr=False)
    payments_webhook_secret: str = dataclasses.field(repr=False)
    webhook_tolerance: int = 300
    payments_timeout: float = 10.0
    # Seconds before the SDK's first retry of a provider call (its later ones back off
    # from it); the default is the SDK's own (stripe.HTTPClient.INITIAL_DELAY).
    payments_retry_delay: float = 0.5
    plans: Mapping[str, Plan] = dataclasses.field(default_factory=lambda: DEFAULT_PLANS)
    # Metering reads apex.data's usage aggregates here (unset: /v1/billing/usage is 503).
    clickhouse_url: str | None = dataclasses.field(default=None, repr=False)
    # The schedule (apex.billing.schedule): seconds between passes (0: none), the usage
    # period's length (seconds, epoch-aligned), how long an invoiced period is corrected.
    schedule_interval: float = 3600.0
    usage_period: int = 86_400
    usage_late_window: float = 604_800.0

    @property
    def test_mode(self) -> bool:
        """Whether the provider key is a test key (test clocks are allowed then only)."""
        return self.payments_api_key.startswith("sk_test_")

    @classmethod
    def _read(cls, env: Env) -> dict[str, Any]:
        shared = super()._read(env)
        for field, variable in (
            ("database_url", "APEX_DATABASE_URL"),
            ("redis_url", "APEX_REDIS_URL"),
        ):
            if shared[field] is None:
                raise missing_setting(variable, SERVICE)
        auth_url = env.url("APEX_AUTH_URL", HTTP_SCHEMES)
        if auth_url is None:
            raise missing_setting("APEX_AUTH_URL", SERVICE)
        base_url = env.url("APEX_PAYMENTS_BASE_URL", HTTP_SCHEMES)
        if base_url is None:
            raise missing_setting("APEX_PAYMENTS_BASE_URL", SERVICE)
        secrets: dict[str, str] = {}
        for field, variable in (
            ("payments_api_key", "APEX_PAYMENTS_API_KEY"),
            ("payments_webhook_secret", "APEX_PAYMENTS_WEBHOOK_SECRET"),
        ):
            value = env.get(variable)
            if value is None:
                raise missing_setting(variable, SERVICE)
            secrets[field] = value
        data_url = env.url("APEX_DATA_URL", HTTP_SCHEMES)
        plans = env.get("APEX_PLANS")
        return {
            **shared,
            **secrets,
            "auth_url": auth_url.rstrip("/"),
            "data_url": data_url.rstrip("/") if data_url else None,
            "admin_token": env.get("APEX_ADMIN_TOKEN"),
            "payments_base_url": base_url.rstrip("/"),
            "webhook_tolerance": env.whole_number("APEX_WEBHOOK_TOLERANCE", 300, unit="seconds"),
            "payments_timeout": env.number("APEX_PAYMENTS_TIMEOUT", 10.0, unit="seconds"),
            "payments_retry_delay": env.number("APEX_PAYMENTS_RETRY_DELAY", 0.5, unit="seconds"),
            "plans": DEFAULT_PLANS if plans is None else parse_plans(plans, "APEX_PLANS"),
            "clickhouse_url": env.url("APEX_CLICKHOUSE_URL", CLICKHOUSE_SCHEMES),
            "schedule_interval": _seconds_or_off(env, "APEX_BILLING_SCHEDULE_INTERVAL", 3600.0),
            "usage_period": env.whole_number("APEX_USAGE_PERIOD", 86_400, unit="seconds"),
            "usage_late_window": env.number("APEX_USAGE_LATE_WINDOW", 604_800.0, unit="seconds"),
        }


def _seconds_or_off(env: Env, variable: str, default: float) -> float:
    """Seconds > 0, or ``0``/``off``: off (0.0)."""
    if (env.get(variable) or "").strip().lower() in ("0", "off"):
        return 0.0
    return env.number(variable, default, unit="seconds")
