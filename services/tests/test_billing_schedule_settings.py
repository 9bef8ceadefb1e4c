"""apex.billing's schedule settings (APEX_BILLING_SCHEDULE_INTERVAL, APEX_USAGE_PERIOD,
APEX_USAGE_LATE_WINDOW; notes-billing.md § Scheduled invoicing): the documented
defaults, `0`/`off` switching the schedule off, a bad value a ConfigError naming it."""

from __future__ import annotations

import pytest

from apex.billing import load_settings
from apex.common.settings import ConfigError

REQUIRED = {
    "APEX_DATABASE_URL": "postgresql://u:pw@db:5432/apex",
    "APEX_REDIS_URL": "redis://cache:6379/0",
    "APEX_AUTH_URL": "http://auth:8000/",
    "APEX_PAYMENTS_BASE_URL": "http://payments:9000/",
    "APEX_PAYMENTS_API_KEY": "sk_test_secret",
    "APEX_PAYMENTS_WEBHOOK_SECRET": "whsec_secret",
}


def test_the_schedule_runs_hourly_over_days_corrected_for_a_week_by_default() -> None:
    settings = load_settings(REQUIRED)
    assert settings.schedule_interval == 3600.0
    assert (settings.usage_period, settings.usage_late_window) == (86_400, 604_800.0)


@pytest.mark.parametrize("off", ["0", "off", "OFF"])
def test_the_schedule_can_be_switched_off(off: str) -> None:
    assert load_settings({**REQUIRED, "APEX_BILLING_SCHEDULE_INTERVAL": off}).schedule_interval == 0


def test_the_schedule_settings_are_read() -> None:
    env = {
        **REQUIRED,
        "APEX_BILLING_SCHEDULE_INTERVAL": "0.2",
        "APEX_USAGE_PERIOD": "2",
        "APEX_USAGE_LATE_WINDOW": "30",
    }
    settings = load_settings(env)
    assert (settings.schedule_interval, settings.usage_period) == (0.2, 2)
    assert settings.usage_late_window == 30.0


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("APEX_BILLING_SCHEDULE_INTERVAL", "-1"),
        ("APEX_BILLING_SCHEDULE_INTERVAL", "hourly"),
        ("APEX_USAGE_PERIOD", "0"),
        ("APEX_USAGE_PERIOD", "1.5"),
        ("APEX_USAGE_LATE_WINDOW", "0"),
    ],
)
def test_a_bad_schedule_setting_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load_settings({**REQUIRED, variable: value})
