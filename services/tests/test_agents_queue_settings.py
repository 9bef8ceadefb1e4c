"""apex.agents' job queue settings (retries, backoff, aging, per-tenant limits: every bad
value a ConfigError naming its variable) and the queue's pure parts: the full-jitter
backoff and the `run_at` rules."""

from __future__ import annotations

import datetime

import pytest

from apex.agents import load_settings
from apex.agents.jobs import backoff, parse_run_at
from apex.common.settings import ConfigError

REQUIRED = {
    "APEX_DATABASE_URL": "postgresql://u:pw@db:5432/apex",
    "APEX_REDIS_URL": "redis://cache:6379/0",
    "APEX_AUTH_URL": "http://auth:8000/",
    "APEX_LLM_BASE_URL": "http://llm:9000/v1/",
    "APEX_LLM_API_KEY": "sk-secret",
}
NOW = datetime.datetime(2026, 12, 6, 12, 0, tzinfo=datetime.UTC)


def test_the_queue_defaults_are_the_contracts() -> None:
    settings = load_settings(REQUIRED)
    assert (settings.job_retries, settings.job_backoff, settings.job_aging) == (
        3,
        (0.5, 30.0),
        10.0,
    )
    assert (settings.tenant_max_running, settings.tenant_token_budget) == (4, 1_000_000)
    assert settings.tenant_max_queued == 1000
    assert settings.tenant_wait == 0.2


def test_every_queue_setting_is_read() -> None:
    settings = load_settings(
        {
            **REQUIRED,
            "APEX_JOB_RETRIES": "5",
            "APEX_JOB_BACKOFF": "0.01/2",
            "APEX_JOB_AGING": "0.3",
            "APEX_TENANT_MAX_RUNNING": "1",
            "APEX_TENANT_MAX_QUEUED": "7",
            "APEX_TENANT_TOKEN_BUDGET": "99",
            "APEX_TENANT_WAIT": "0.02",
        }
    )
    assert (settings.job_retries, settings.job_backoff, settings.job_aging) == (5, (0.01, 2.0), 0.3)
    assert (settings.tenant_max_running, settings.tenant_max_queued) == (1, 7)
    assert settings.tenant_token_budget == 99
    assert settings.tenant_wait == 0.02


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("APEX_JOB_RETRIES", "0"),
        ("APEX_JOB_RETRIES", "three"),
        ("APEX_JOB_BACKOFF", "0.5"),
        ("APEX_JOB_BACKOFF", "0.5/30/60"),
        ("APEX_JOB_BACKOFF", "a/b"),
        ("APEX_JOB_BACKOFF", "0/30"),
        ("APEX_JOB_BACKOFF", "5/1"),
        ("APEX_JOB_BACKOFF", "0.5/inf"),
        ("APEX_JOB_BACKOFF", "nan/1"),
        ("APEX_JOB_AGING", "0"),
        ("APEX_TENANT_MAX_RUNNING", "0"),
        ("APEX_TENANT_MAX_QUEUED", "-1"),
        ("APEX_TENANT_TOKEN_BUDGET", "1.5"),
        ("APEX_TENANT_WAIT", "0"),
        ("APEX_TENANT_WAIT", "-0.2"),
        ("APEX_TENANT_WAIT", "inf"),
        ("APEX_TENANT_WAIT", "soon"),
    ],
)
def test_a_bad_queue_setting_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load_settings({**REQUIRED, variable: value})


def test_the_backoff_is_full_jitter_under_the_cap() -> None:
    waits = [backoff(attempt, 0.5, 3.0) for attempt in (1, 2, 3, 10) for _ in range(200)]
    assert all(w >= 0 for w in waits)
    assert max(backoff(1, 0.5, 3.0) for _ in range(200)) <= 0.5
    assert max(backoff(2, 0.5, 3.0) for _ in range(200)) <= 1.0
    assert max(backoff(10, 0.5, 3.0) for _ in range(200)) <= 3.0


@pytest.mark.parametrize(
    "text",
    ["2026-12-06T13:00:00Z", "2026-12-06t14:00:00.5+01:30", "2027-01-05 12:00:00+00:00"],
)
def test_run_at_in_the_next_30_days_is_accepted(text: str) -> None:
    when = parse_run_at(text, NOW)
    assert NOW < when <= NOW + datetime.timedelta(days=30)


@pytest.mark.parametrize(
    "text",
    [
        "2026-12-06T12:00:00Z",  # now is not the future
        "2026-12-06T11:00:00Z",
        "2027-01-05T12:00:01Z",  # one second past 30 days
        "2026-12-06T13:00:00",  # no offset
        "20261206T130000Z",  # ISO 8601 basic, not RFC 3339
        "2026-13-06T13:00:00Z",
        "tomorrow",
    ],
)
def test_a_bad_run_at_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="run_at"):
        parse_run_at(text, NOW)
