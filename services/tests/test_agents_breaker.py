"""apex.agents' circuit breaker (on a clock of the test's) and the failover settings."""

from __future__ import annotations

import pytest

from apex.agents import load_settings
from apex.agents.breaker import Breaker, State
from apex.common.settings import ConfigError

REQUIRED = {
    "APEX_DATABASE_URL": "postgresql://u:pw@db:5432/apex",
    "APEX_REDIS_URL": "redis://cache:6379/0",
    "APEX_AUTH_URL": "http://auth:8000/",
    "APEX_LLM_BASE_URL": "http://llm:9000/v1/",
    "APEX_LLM_API_KEY": "sk-secret",
}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _breaker(failures: int = 2, reset: float = 10.0) -> tuple[Breaker, Clock, list[int]]:
    clock, opened = Clock(), []
    breaker = Breaker(failures, reset, on_open=lambda: opened.append(1), clock=clock)
    return breaker, clock, opened


def test_it_opens_after_the_consecutive_failures_and_refuses_calls_while_open() -> None:
    breaker, clock, opened = _breaker()
    assert breaker.allow()
    breaker.failure()
    assert breaker.state is State.CLOSED
    breaker.success()  # the count starts again
    breaker.failure()
    assert breaker.state is State.CLOSED
    breaker.failure()
    assert (breaker.state, len(opened)) == (State.OPEN, 1)
    clock.now += 9.9
    assert not breaker.allow()
    breaker.failure()  # a call that began before it opened: no second opening
    assert (breaker.state, len(opened)) == (State.OPEN, 1)


def test_after_the_reset_one_trial_closes_or_reopens_it() -> None:
    breaker, clock, opened = _breaker(failures=1)
    breaker.failure()
    clock.now += 10.0
    assert breaker.state is State.HALF_OPEN
    assert breaker.allow()
    assert not breaker.allow()  # one trial at a time
    breaker.failure()
    assert (breaker.state, len(opened)) == (State.OPEN, 2)
    clock.now += 10.0
    assert breaker.allow()
    breaker.abandon()  # the trial was cancelled: the next call is the trial
    assert breaker.allow()
    breaker.success()
    assert breaker.state is State.CLOSED
    assert breaker.allow()
    assert breaker.allow()


def test_the_fallback_is_both_settings_or_neither_and_the_breaker_window_is_read() -> None:
    defaults = load_settings(REQUIRED)
    assert (defaults.llm_fallback_base_url, defaults.llm_fallback_api_key) == (None, None)
    assert (defaults.breaker_failures, defaults.breaker_reset) == (5, 30.0)
    settings = load_settings(
        {
            **REQUIRED,
            "APEX_LLM_FALLBACK_BASE_URL": "http://other:9000/v1/",
            "APEX_LLM_FALLBACK_API_KEY": "sk-other",
            "APEX_BREAKER_FAILURES": "2",
            "APEX_BREAKER_RESET": "0.2",
        }
    )
    assert settings.llm_fallback_base_url == "http://other:9000/v1"
    assert settings.llm_fallback_api_key == "sk-other"
    assert (settings.breaker_failures, settings.breaker_reset) == (2, 0.2)
    assert "sk-other" not in repr(settings)


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("APEX_LLM_FALLBACK_BASE_URL", "http://other:9000/v1", "APEX_LLM_FALLBACK_API_KEY"),
        ("APEX_LLM_FALLBACK_API_KEY", "sk-other", "APEX_LLM_FALLBACK_BASE_URL"),
        ("APEX_LLM_FALLBACK_BASE_URL", "ftp://other", "APEX_LLM_FALLBACK_BASE_URL"),
        ("APEX_BREAKER_FAILURES", "0", "APEX_BREAKER_FAILURES"),
        ("APEX_BREAKER_FAILURES", "two", "APEX_BREAKER_FAILURES"),
        ("APEX_BREAKER_RESET", "0", "APEX_BREAKER_RESET"),
        ("APEX_BREAKER_RESET", "soon", "APEX_BREAKER_RESET"),
    ],
)
def test_a_bad_failover_setting_names_its_variable(variable: str, value: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings({**REQUIRED, variable: value})
