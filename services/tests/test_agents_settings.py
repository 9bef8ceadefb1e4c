"""apex.agents' settings (every bad value a ConfigError naming its variable) and its pure
parts: the cost of a call, the provider's retry wait (a 429's retry-after, else the
APEX_LLM_BACKOFF full jitter)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from apex.agents import AgentSettings, Model, cost_micros, load_settings
from apex.agents.__main__ import main
from apex.agents.costs import DEFAULT_MODELS
from apex.agents.llm import Provider
from apex.common.settings import ConfigError

REQUIRED = {
    "APEX_DATABASE_URL": "postgresql://u:pw@db:5432/apex",
    "APEX_REDIS_URL": "redis://cache:6379/0",
    "APEX_AUTH_URL": "http://auth:8000/",
    "APEX_LLM_BASE_URL": "http://llm:9000/v1/",
    "APEX_LLM_API_KEY": "sk-secret",
}


def test_the_defaults_are_the_contracts() -> None:
    settings = load_settings(REQUIRED)
    assert isinstance(settings, AgentSettings)
    assert (settings.auth_url, settings.data_url) == ("http://auth:8000", None)
    assert settings.llm_base_url == "http://llm:9000/v1"
    assert (settings.llm_timeout, settings.llm_retries) == (30.0, 2)
    assert settings.llm_backoff == (0.05, 1.0)
    assert (settings.workers, settings.job_claim_idle, settings.run_timeout) == (2, 30.0, 120.0)
    assert settings.otel_export_delay == 1.0
    assert settings.models == DEFAULT_MODELS
    assert DEFAULT_MODELS["gpt-4o-mini"] == Model(128_000, 150, 600)
    assert "sk-secret" not in repr(settings)
    assert "pw@" not in repr(settings)


def test_every_setting_is_read() -> None:
    models = {"m": {"context_window": 10, "input_micros_per_1k": 1, "output_micros_per_1k": 2}}
    settings = load_settings(
        {
            **REQUIRED,
            "APEX_DATA_URL": "http://data:8000/",
            "APEX_LLM_TIMEOUT": "2.5",
            "APEX_LLM_RETRIES": "0",
            "APEX_LLM_BACKOFF": "0.001/0.01",
            "APEX_AGENTS_WORKERS": "0",
            "APEX_JOB_CLAIM_IDLE": "0.5",
            "APEX_RUN_TIMEOUT": "9",
            "APEX_MODELS": json.dumps(models),
            "APEX_OTEL_EXPORT_DELAY": "0.05",
        }
    )
    assert settings.otel_export_delay == 0.05
    assert settings.data_url == "http://data:8000"
    assert (settings.llm_timeout, settings.llm_retries, settings.workers) == (2.5, 0, 0)
    assert settings.llm_backoff == (0.001, 0.01)
    assert (settings.job_claim_idle, settings.run_timeout) == (0.5, 9.0)
    assert dict(settings.models) == {"m": Model(10, 1, 2)}


@pytest.mark.parametrize(
    "variable", ["APEX_LLM_BASE_URL", "APEX_LLM_API_KEY", "APEX_AUTH_URL", "APEX_REDIS_URL"]
)
def test_a_missing_required_setting_is_named(variable: str) -> None:
    env = {k: v for k, v in REQUIRED.items() if k != variable}
    with pytest.raises(ConfigError, match=variable):
        load_settings(env)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("APEX_LLM_BASE_URL", "ftp://llm"),
        ("APEX_LLM_TIMEOUT", "0"),
        ("APEX_LLM_RETRIES", "-1"),
        ("APEX_LLM_RETRIES", "two"),
        ("APEX_LLM_BACKOFF", "0.05"),
        ("APEX_LLM_BACKOFF", "0/1"),
        ("APEX_LLM_BACKOFF", "2/1"),
        ("APEX_LLM_BACKOFF", "0.05/inf"),
        ("APEX_AGENTS_WORKERS", "1.5"),
        ("APEX_JOB_CLAIM_IDLE", "nan-ish"),
        ("APEX_RUN_TIMEOUT", "-3"),
        ("APEX_OTEL_EXPORT_DELAY", "0"),
        ("APEX_MODELS", "{"),
        ("APEX_MODELS", "{}"),
        ("APEX_MODELS", '{"m": {"context_window": 1}}'),
        (
            "APEX_MODELS",
            '{"m": {"context_window": 0, "input_micros_per_1k": 1, "output_micros_per_1k": 1}}',
        ),
        (
            "APEX_MODELS",
            '{"m": {"context_window": 5, "input_micros_per_1k": -1, "output_micros_per_1k": 1}}',
        ),
    ],
)
def test_a_bad_value_is_a_config_error_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load_settings({**REQUIRED, variable: value})


def test_the_cost_is_rounded_up_once_per_call() -> None:
    model = Model(1000, 150, 600)
    assert cost_micros(model, 0, 0) == 0
    assert cost_micros(model, 1, 0) == 1  # 0.15 micros: a call that used tokens costs
    assert cost_micros(model, 1000, 1000) == 750
    assert cost_micros(model, 7, 3) == 3  # (1050 + 1800) / 1000 = 2.85 -> 3


def _rate_limited(headers: dict[str, str]) -> openai.RateLimitError:
    request = httpx.Request("POST", "http://llm/v1/chat/completions")
    response = httpx.Response(429, headers=headers, request=request)
    return openai.RateLimitError("slow down", response=response, body=None)


@pytest.mark.parametrize(
    ("headers", "wait"),
    [({"retry-after-ms": "250"}, 0.25), ({"retry-after": "2"}, 2.0), ({"retry-after": "90"}, 5.0)],
)
async def test_a_429_waits_its_retry_after_capped_at_the_timeout(
    headers: dict[str, str], wait: float
) -> None:
    provider = Provider("llm", "http://llm/v1", "key", timeout=5.0, retries=2, backoff=(9, 9))
    try:
        assert provider.retry_wait(_rate_limited(headers), 1) == wait
    finally:
        await provider.aclose()


async def test_another_retry_waits_full_jitter_under_the_backoffs_cap() -> None:
    provider = Provider("llm", "http://llm/v1", "key", timeout=5.0, retries=2, backoff=(0.5, 3))
    error = openai.InternalServerError(
        "down",
        response=httpx.Response(500, request=httpx.Request("POST", "http://llm/v1")),
        body=None,
    )
    try:
        waits = {n: [provider.retry_wait(error, n) for _ in range(200)] for n in (1, 2, 5)}
        assert all(w >= 0 for ws in waits.values() for w in ws)
        assert max(waits[1]) <= 1.0  # base * 2^1
        assert max(waits[2]) <= 2.0
        assert max(waits[5]) <= 3.0  # the cap
        assert max(waits[5]) > 1.0  # under the cap, not under the first retry's bound
        # A 429 without retry-after backs off as well.
        assert provider.retry_wait(_rate_limited({}), 1) <= 1.0
    finally:
        await provider.aclose()


def test_the_worker_command_names_a_missing_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for variable in ("APEX_LLM_BASE_URL", "APEX_DATABASE_URL", "APEX_REDIS_URL"):
        monkeypatch.delenv(variable, raising=False)
    assert main(["worker"]) == 2
    assert "APEX_DATABASE_URL" in capsys.readouterr().err
    assert main(["worker", "--extra"]) == 2


# APEX_COST_BATCH: 100 records by default, at most what apex.data takes in one batch.


def test_the_cost_batch_is_100_by_default_and_up_to_apex_datas_largest() -> None:
    assert load_settings(REQUIRED).cost_batch == 100
    assert load_settings({**REQUIRED, "APEX_COST_BATCH": "10000"}).cost_batch == 10_000


@pytest.mark.parametrize(("value", "message"), [("10001", "at most 10000"), ("0", "at least 1")])
def test_a_cost_batch_apex_data_would_refuse_is_a_config_error(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"APEX_COST_BATCH must be {message}"):
        load_settings({**REQUIRED, "APEX_COST_BATCH": value})
