"""apex.agents' plan-limit settings (APEX_PLAN_LIMITS, APEX_PLAN_RATE_WINDOW): off and a
minute by default (notes-billing.md deviation 3), a bad value a ConfigError naming it."""

from __future__ import annotations

import pytest

from apex.agents import load_settings
from apex.common.settings import ConfigError

REQUIRED = {
    "APEX_DATABASE_URL": "postgresql://u:pw@db:5432/apex",
    "APEX_REDIS_URL": "redis://cache:6379/0",
    "APEX_AUTH_URL": "http://auth:8000/",
    "APEX_LLM_BASE_URL": "http://llm:9000/v1/",
    "APEX_LLM_API_KEY": "sk-secret",
}


def test_plan_limits_are_off_by_default_with_a_minute_window() -> None:
    settings = load_settings(REQUIRED)
    assert (settings.plan_limits, settings.plan_rate_window) == (False, 60.0)


def test_plan_limit_settings_are_read() -> None:
    env = {**REQUIRED, "APEX_PLAN_LIMITS": "ON", "APEX_PLAN_RATE_WINDOW": "0.5"}
    settings = load_settings(env)
    assert (settings.plan_limits, settings.plan_rate_window) == (True, 0.5)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("APEX_PLAN_LIMITS", "yes"),
        ("APEX_PLAN_RATE_WINDOW", "0"),
        ("APEX_PLAN_RATE_WINDOW", "-1"),
        ("APEX_PLAN_RATE_WINDOW", "inf"),
        ("APEX_PLAN_RATE_WINDOW", "a minute"),
    ],
)
def test_a_bad_plan_limit_setting_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load_settings({**REQUIRED, variable: value})
