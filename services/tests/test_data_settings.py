"""apex.data's settings and its pure helpers: backoff with jitter, LSNs, multi-host DSNs."""

from __future__ import annotations

import pytest

from apex.common.settings import ConfigError, Env
from apex.data import Backoff, DataSettings, load_settings
from apex.data.retry import backoff_delay
from apex.data.router import parse_lsn

REQUIRED = {
    "APEX_DATABASE_URL": "postgresql://u:pw@db:5432/apex",
    "APEX_REDIS_URL": "redis://cache:6379/0",
    "APEX_AUTH_URL": "http://auth:8000/",
}


def test_the_defaults_are_the_contracts() -> None:
    settings = load_settings(REQUIRED)
    assert isinstance(settings, DataSettings)
    assert settings.auth_url == "http://auth:8000"
    assert (settings.replica_url, settings.replica_max_lag_bytes) == (None, 16_777_216)
    assert (settings.pool_size, settings.pool_timeout, settings.statement_timeout) == (
        10,
        5.0,
        30.0,
    )
    assert (settings.retries, settings.retry_backoff) == (3, Backoff(0.05, 1.0))
    assert (settings.connect_deadline, settings.migration_lock_timeout) == (30.0, 5.0)
    assert settings.cache_redis_urls == ("redis://cache:6379/0",)
    assert (settings.cache_ttl, settings.cache_lock_ttl) == (300.0, 5.0)
    assert (settings.outbox_batch, settings.outbox_poll) == (500, 0.5)
    assert settings.replica_lag_check == 1.0
    assert "pw@" not in repr(settings)


def test_every_setting_is_read() -> None:
    settings = load_settings(
        {
            **REQUIRED,
            "APEX_DATABASE_REPLICA_URL": "postgresql://u@replica:5432/apex",
            "APEX_REPLICA_MAX_LAG_BYTES": "1024",
            "APEX_REPLICA_LAG_CHECK": "0.1",
            "APEX_DB_POOL_SIZE": "2",
            "APEX_DB_POOL_TIMEOUT": "0.2",
            "APEX_DB_STATEMENT_TIMEOUT": "0.3",
            "APEX_DB_RETRIES": "1",
            "APEX_DB_RETRY_BACKOFF": "0.01/0.5",
            "APEX_DB_CONNECT_DEADLINE": "2",
            "APEX_MIGRATION_LOCK_TIMEOUT": "0.5",
            "APEX_CACHE_REDIS_URLS": "redis://a:6379/0, redis://b:6379/0",
            "APEX_CACHE_TTL": "1.5",
            "APEX_CACHE_LOCK_TTL": "0.5",
            "APEX_OUTBOX_BATCH": "10",
            "APEX_OUTBOX_POLL": "0.05",
            "APEX_ADMIN_TOKEN": "secret",
        }
    )
    assert settings.replica_url == "postgresql://u@replica:5432/apex"
    assert (settings.replica_max_lag_bytes, settings.replica_lag_check) == (1024, 0.1)
    assert (settings.pool_size, settings.pool_timeout, settings.statement_timeout) == (2, 0.2, 0.3)
    assert (settings.retries, settings.retry_backoff) == (1, Backoff(0.01, 0.5))
    assert (settings.connect_deadline, settings.migration_lock_timeout) == (2.0, 0.5)
    assert settings.cache_redis_urls == ("redis://a:6379/0", "redis://b:6379/0")
    assert (settings.cache_ttl, settings.cache_lock_ttl) == (1.5, 0.5)
    assert (settings.outbox_batch, settings.outbox_poll) == (10, 0.05)
    assert settings.admin_token == "secret"
    assert "secret" not in repr(settings)


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_a_required_setting_missing_is_named(missing: str) -> None:
    env = {k: v for k, v in REQUIRED.items() if k != missing}
    with pytest.raises(ConfigError, match=f"{missing} is required by apex.data"):
        load_settings(env)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("APEX_DB_POOL_SIZE", "0", "APEX_DB_POOL_SIZE must be at least 1"),
        ("APEX_DB_POOL_TIMEOUT", "-1", "APEX_DB_POOL_TIMEOUT must be a positive number"),
        ("APEX_DB_STATEMENT_TIMEOUT", "soon", "APEX_DB_STATEMENT_TIMEOUT must be a number"),
        ("APEX_DB_RETRIES", "1.5", "APEX_DB_RETRIES must be a whole number"),
        ("APEX_DB_RETRY_BACKOFF", "1/0.5", "APEX_DB_RETRY_BACKOFF must be base/cap"),
        ("APEX_DB_RETRY_BACKOFF", "0.1", "APEX_DB_RETRY_BACKOFF must be base/cap"),
        ("APEX_DB_RETRY_BACKOFF", "0/1", "APEX_DB_RETRY_BACKOFF must be base/cap"),
        ("APEX_DATABASE_REPLICA_URL", "mysql://r/x", "must start with postgresql://"),
        ("APEX_CACHE_REDIS_URLS", "redis://a:6379/0,", "APEX_CACHE_REDIS_URLS has an empty"),
        ("APEX_CACHE_REDIS_URLS", "redis://a/0,redis://a/0", "the same Redis node twice"),
        ("APEX_CACHE_REDIS_URLS", "http://a/0", r"APEX_CACHE_REDIS_URLS\[0\] must start"),
        ("APEX_AUTH_URL", "ftp://auth", "APEX_AUTH_URL must start with http://"),
        ("APEX_CLICKHOUSE_URL", "http://ch:8123", "APEX_CLICKHOUSE_URL must start with"),
        ("APEX_REPLICA_MAX_LAG_BYTES", "-5", "APEX_REPLICA_MAX_LAG_BYTES must be at least 1"),
    ],
)
def test_a_bad_value_is_a_config_error_naming_the_variable(
    variable: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings({**REQUIRED, variable: value})


def test_a_multi_host_dsn_is_accepted_and_each_host_checked() -> None:
    dsn = "postgresql://u@h1:5432,h2:5433/apex?target_session_attrs=read-write"
    assert load_settings({**REQUIRED, "APEX_DATABASE_URL": dsn}).database_url == dsn
    with pytest.raises(ConfigError, match=r"has port 0.*host 2 of APEX_DATABASE_URL"):
        Env({"APEX_DATABASE_URL": "postgresql://u:pw@h1:5432,h2:0/apex"}).postgres_url(
            "APEX_DATABASE_URL"
        )


@pytest.mark.parametrize("attempt", range(8))
def test_backoff_is_full_jitter_under_the_capped_exponential(attempt: int) -> None:
    backoff = Backoff(0.05, 1.0)
    ceiling = min(1.0, 0.05 * 2**attempt)
    assert backoff_delay(backoff, attempt, rand=lambda: 0.0) == 0.0
    assert backoff_delay(backoff, attempt, rand=lambda: 0.5) == pytest.approx(ceiling / 2)
    assert backoff_delay(backoff, attempt, rand=lambda: 0.999) < ceiling


@pytest.mark.parametrize("text", ["0/0", "16/b374d848", "FFFFFFFF/FFFFFFFF"])
def test_an_lsn_is_parsed(text: str) -> None:
    assert parse_lsn(text) == text.upper()


@pytest.mark.parametrize("text", ["", "16", "16/", "x/1", "1/2/3", "123456789/0"])
def test_a_bad_lsn_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="LSN"):
        parse_lsn(text)
