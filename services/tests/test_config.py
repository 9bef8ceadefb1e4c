"""Settings.from_env: defaults, parsing, and errors that name the variable."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from apex.common.config import ConfigError, RateLimit, Settings, parse_rate_limits


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def test_defaults_from_an_empty_environment() -> None:
    settings = Settings.from_env({})
    assert settings.database_url is None
    assert settings.redis_url is None
    assert settings.redis_prefix == ""
    assert (settings.jwt_issuer, settings.jwt_audience) == ("apex-auth", "apex")
    assert (settings.jwt_access_ttl, settings.jwt_refresh_ttl) == (900, 2_592_000)
    assert settings.admin_token is None
    assert settings.log_level == "INFO"
    assert settings.auth_rate_limits == {
        "free": RateLimit(10, 60),
        "pro": RateLimit(100, 60),
        "enterprise": RateLimit(1000, 60),
    }


def test_every_variable_is_read() -> None:
    key = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    settings = Settings.from_env(
        {
            "APEX_DATABASE_URL": "postgresql://u:pw@db:5432/apex",
            "APEX_REDIS_URL": "redis://cache:6379/3",
            "APEX_REDIS_PREFIX": "run1:",
            "APEX_CLICKHOUSE_URL": "clickhouse://default@ch:9000/events",
            "APEX_JWT_PRIVATE_KEY": key,
            "APEX_JWT_ISSUER": "iss",
            "APEX_JWT_AUDIENCE": "aud",
            "APEX_JWT_ACCESS_TTL": "60",
            "APEX_JWT_REFRESH_TTL": "3600",
            "APEX_ADMIN_TOKEN": "s3cret",
            "APEX_AUTH_RATE_LIMITS": "free=3/10",
            "APEX_LOG_LEVEL": "debug",
        }
    )
    assert settings.database_url == "postgresql://u:pw@db:5432/apex"
    assert settings.redis_url == "redis://cache:6379/3"
    assert settings.redis_prefix == "run1:"
    assert settings.clickhouse_url == "clickhouse://default@ch:9000/events"
    assert settings.jwt_private_key == key
    assert (settings.jwt_issuer, settings.jwt_audience) == ("iss", "aud")
    assert (settings.jwt_access_ttl, settings.jwt_refresh_ttl) == (60, 3600)
    assert settings.admin_token == "s3cret"
    # Tiers left out keep their defaults.
    assert settings.auth_rate_limits["free"] == RateLimit(3, 10)
    assert settings.auth_rate_limits["pro"] == RateLimit(100, 60)
    assert settings.log_level == "DEBUG"


def test_secrets_stay_out_of_repr() -> None:
    settings = Settings.from_env({"APEX_ADMIN_TOKEN": "do-not-print-me"})
    assert "do-not-print-me" not in repr(settings)


def test_empty_variables_count_as_unset() -> None:
    settings = Settings.from_env(
        {"APEX_ADMIN_TOKEN": "", "APEX_JWT_ACCESS_TTL": "", "APEX_DATABASE_URL": ""}
    )
    assert settings.admin_token is None
    assert settings.jwt_access_ttl == 900
    assert settings.database_url is None


def test_private_key_with_escaped_newlines_is_accepted() -> None:
    key = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    settings = Settings.from_env({"APEX_JWT_PRIVATE_KEY": key.replace("\n", "\\n")})
    assert settings.jwt_private_key == key


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("APEX_JWT_ACCESS_TTL", "abc", "APEX_JWT_ACCESS_TTL must be a number of seconds"),
        ("APEX_JWT_ACCESS_TTL", "0", "APEX_JWT_ACCESS_TTL must be a positive number of seconds"),
        ("APEX_JWT_ACCESS_TTL", "0.0004", "APEX_JWT_ACCESS_TTL must be at least 0.001 seconds"),
        ("APEX_JWT_REFRESH_TTL", "-5", "APEX_JWT_REFRESH_TTL must be a positive number of seconds"),
        ("APEX_DATABASE_URL", "mysql://db/x", "APEX_DATABASE_URL must start with postgresql://"),
        ("APEX_DATABASE_URL", "postgresql://:5432/x", "APEX_DATABASE_URL has no host"),
        ("APEX_DATABASE_URL", "postgresql://db:99999/x", "APEX_DATABASE_URL is not a valid URL"),
        ("APEX_REDIS_URL", "http://cache", "APEX_REDIS_URL must start with redis://"),
        (
            "APEX_CLICKHOUSE_URL",
            "tcp://ch:9000",
            "APEX_CLICKHOUSE_URL must start with clickhouse://",
        ),
        ("APEX_LOG_LEVEL", "LOUD", "APEX_LOG_LEVEL must be one of"),
        ("APEX_AUTH_RATE_LIMITS", "free=10", "is not of the form tier=count/seconds"),
        ("APEX_AUTH_RATE_LIMITS", "gold=10/60", "unknown tier 'gold'"),
        ("APEX_AUTH_RATE_LIMITS", "free=ten/60", "needs a whole count and a number of seconds"),
        ("APEX_AUTH_RATE_LIMITS", "free=0/60", "at least 1"),
        ("APEX_JWT_PRIVATE_KEY", "not a key", "APEX_JWT_PRIVATE_KEY is not an unencrypted PEM"),
    ],
)
def test_bad_values_name_the_variable_and_the_value(
    variable: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({variable: value})
    text = str(info.value)
    assert message in text
    assert variable in text
    if variable != "APEX_JWT_PRIVATE_KEY":  # a secret: never echoed
        assert value in text


def test_token_ttls_may_be_fractions_of_a_second() -> None:
    """Test environments see tokens expire in tenths of a second; whole values stay ints."""
    short = Settings.from_env({"APEX_JWT_ACCESS_TTL": "0.25", "APEX_JWT_REFRESH_TTL": "0.5"})
    assert (short.jwt_access_ttl, short.jwt_refresh_ttl) == (0.25, 0.5)
    whole = Settings.from_env({"APEX_JWT_ACCESS_TTL": "60.0"}).jwt_access_ttl
    assert (whole, type(whole)) == (60, int)


def test_refresh_ttl_shorter_than_access_ttl_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"APEX_JWT_REFRESH_TTL \(60\) must not be shorter"):
        Settings.from_env({"APEX_JWT_ACCESS_TTL": "600", "APEX_JWT_REFRESH_TTL": "60"})


def test_url_passwords_are_not_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"APEX_DATABASE_URL": "mysql://user:hunter2@db/x"})
    assert "hunter2" not in str(info.value)
    assert "***" in str(info.value)


def test_private_key_errors_never_echo_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"APEX_JWT_PRIVATE_KEY": "-----BEGIN PRIVATE KEY-----\nsecretstuff"})
    assert "secretstuff" not in str(info.value)


def test_non_rsa_and_short_keys_are_refused() -> None:
    with pytest.raises(ConfigError, match="must be an RSA key"):
        Settings.from_env({"APEX_JWT_PRIVATE_KEY": _pem(ec.generate_private_key(ec.SECP256R1()))})
    # A weak key on purpose: the check under test refuses it.
    short = _pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))  # noqa: S505
    with pytest.raises(ConfigError, match="1024-bit"):
        Settings.from_env({"APEX_JWT_PRIVATE_KEY": short})


def test_require_names_the_missing_variable() -> None:
    settings = Settings.from_env({})
    with pytest.raises(ConfigError, match=r"APEX_DATABASE_URL is required by apex\.auth"):
        settings.require("database_url", service="apex.auth")


def test_rate_limits_ignore_blank_items_and_spaces() -> None:
    limits = parse_rate_limits(" free = 5/30 , ,pro=7/1 ")
    assert limits["free"] == RateLimit(5, 30)
    assert limits["pro"] == RateLimit(7, 1)
    assert limits["enterprise"] == RateLimit(1000, 60)
