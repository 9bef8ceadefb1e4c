"""ServiceSettings: one base and one set of parsers for every service's settings."""

from __future__ import annotations

import math
import re

import pytest

from apex.common.config import Settings
from apex.common.settings import ConfigError, Env, RateLimit, ServiceSettings, parse_rate
from apex.gateway.settings import GatewaySettings

SHARED = {
    "APEX_REDIS_URL": "redis://cache:6379/3",
    "APEX_REDIS_PREFIX": "run1:",
    "APEX_DATABASE_URL": "postgresql://u:pw@db:5432/apex",
    "APEX_JWT_ISSUER": "iss",
    "APEX_JWT_AUDIENCE": "aud",
    "APEX_LOG_LEVEL": "warning",
}


@pytest.mark.parametrize("settings_type", [ServiceSettings, Settings, GatewaySettings])
def test_every_service_reads_the_shared_fields_alike(settings_type: type[ServiceSettings]) -> None:
    settings = settings_type.from_env(SHARED)
    assert isinstance(settings, ServiceSettings)
    assert (settings.redis_url, settings.redis_prefix) == ("redis://cache:6379/3", "run1:")
    assert settings.database_url == "postgresql://u:pw@db:5432/apex"
    assert (settings.jwt_issuer, settings.jwt_audience) == ("iss", "aud")
    assert settings.log_level == "WARNING"
    # A database URL may carry a password.
    assert "pw@" not in repr(settings)


@pytest.mark.parametrize("settings_type", [Settings, GatewaySettings])
@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("APEX_DATABASE_URL", "mysql://u:hunter2@db/x", "must start with postgresql://"),
        ("APEX_REDIS_URL", "redis://cache:0/1", "APEX_REDIS_URL has port 0"),
        ("APEX_LOG_LEVEL", "LOUD", "APEX_LOG_LEVEL must be one of"),
    ],
)
def test_shared_fields_fail_alike(
    settings_type: type[ServiceSettings], variable: str, value: str, message: str
) -> None:
    env = {**SHARED, variable: value}
    with pytest.raises(ConfigError, match=message) as info:
        settings_type.from_env(env)
    assert "hunter2" not in str(info.value)


def test_the_gateway_requires_redis_the_others_do_not() -> None:
    assert Settings.from_env({}).redis_url is None
    with pytest.raises(ConfigError, match=r"APEX_REDIS_URL is required by apex\.gateway"):
        GatewaySettings.from_env({})


def test_one_rate_type_for_auth_limits_and_gateway_rates() -> None:
    gateway = GatewaySettings.from_env({**SHARED, "APEX_WS_RATE": "5/0.5"})
    auth = Settings.from_env({"APEX_LOGIN_LOCKOUT": "3/60"})
    assert gateway.rate == RateLimit(5, 0.5)
    assert auth.login_lockout == RateLimit(3, 60)
    assert type(auth.login_lockout.window) is int  # answers that show it keep showing 60


def test_expiring_windows_are_precise_to_the_millisecond() -> None:
    auth = Settings.from_env(
        {
            "APEX_LOGIN_LOCKOUT": "3/0.25",
            "APEX_API_RATE_LIMITS": "free=5/0.3",
            "APEX_MFA_SMS_CODE_TTL": "0.2",
            "APEX_PASSWORD_RESET_TTL": "0.5",
        }
    )
    assert auth.login_lockout == RateLimit(3, 0.25)
    assert auth.login_lockout.window_ms == 250
    assert auth.api_rate_limits["free"] == RateLimit(5, 0.3)
    assert (auth.mfa_sms_code_ttl, auth.password_reset_ttl) == (0.2, 0.5)
    assert RateLimit(1, 0.0015).window_ms == 2, "rounded up, never down to 0"


@pytest.mark.parametrize(
    ("text", "expiring", "reason"),
    [
        ("5", False, "is not of the form count/seconds"),
        ("x/1", False, "needs a whole count and a number of seconds"),
        ("5/1.5/2", True, "needs a whole count and a number of seconds"),
        ("0/1", False, "needs a count of at least 1"),
        ("1/inf", False, "needs a finite window of more than 0 seconds"),
        ("1/nan", True, "needs a finite window of at least 0.001 seconds"),
        ("1/0", False, "needs a finite window of more than 0 seconds"),
        ("1/0.0005", True, "needs a finite window of at least 0.001 seconds"),
    ],
)
def test_parse_rate_says_what_is_wrong(text: str, expiring: bool, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_rate(text, expiring=expiring)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("APEX_LOGIN_LOCKOUT", "3/0", "seconds >= 0.001 (milliseconds count)"),
        ("APEX_API_RATE_LIMITS", "free=5/0.0001", "at least 0.001 seconds"),
        ("APEX_MFA_SMS_CODE_TTL", "0.0001", "APEX_MFA_SMS_CODE_TTL must be at least 0.001"),
        ("APEX_PASSWORD_RESET_TTL", "0", "APEX_PASSWORD_RESET_TTL must be a positive number"),
    ],
)
def test_bad_windows_say_what_is_wrong(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.from_env({variable: value})


@pytest.mark.parametrize(
    ("kwargs", "text", "message"),
    [
        ({"unit": "seconds"}, "x", "V must be a number of seconds, got 'x'"),
        ({"unit": "seconds"}, "-1", "V must be a positive number of seconds, got '-1'"),
        ({}, "0", "V must be greater than 0, got '0'"),
        ({}, "inf", "V must be a finite number, got 'inf'"),
    ],
)
def test_number_messages(kwargs: dict[str, str], text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Env({"V": text}).number("V", 1.0, **kwargs)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("kwargs", "text", "message"),
    [
        ({"unit": "seconds"}, "1.5", "V must be a whole number of seconds, got '1.5'"),
        ({"unit": "seconds"}, "0", "V must be at least 1, got '0'"),
        ({}, "x", "V must be a whole number, got 'x'"),
        ({}, "0", "V must be greater than 0, got '0'"),
    ],
)
def test_whole_number_messages(kwargs: dict[str, str], text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Env({"V": text}).whole_number("V", 1, **kwargs)
    assert str(info.value) == message


def test_empty_variables_are_unset_but_an_empty_prefix_is_kept() -> None:
    env = Env({"V": "", "APEX_REDIS_PREFIX": ""})
    assert env.get("V") is None
    assert env.number("V", math.pi) == math.pi
    assert env.raw("APEX_REDIS_PREFIX", "default") == ""
