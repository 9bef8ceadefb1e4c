"""apex.agents' settings, read from ``APEX_*`` environment variables.

:class:`AgentSettings` derives from :class:`apex.common.settings.ServiceSettings` (the
platform's Redis namespace, database, JWT issuer, log level; both URLs required) and adds
where apex.auth and apex.data are, the LLM provider, the workers, the job queue and the
model price table. Every window is a float of seconds. A bad value raises
:class:`apex.common.settings.ConfigError` naming the variable. The table of settings is
in ``services/docs/contract-agents.md``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from apex.agents.costs import DEFAULT_MODELS, Model
from apex.common.settings import HTTP_SCHEMES, ConfigError, Env, ServiceSettings, missing_setting

__all__ = ["AgentSettings"]

SERVICE: Final = "apex.agents"
_MODEL_FIELDS: Final = ("context_window", "input_micros_per_1k", "output_micros_per_1k")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AgentSettings(ServiceSettings):
    """Everything apex.agents reads from its environment."""

    redis_url: str
    database_url: str = dataclasses.field(repr=False)
    auth_url: str
    data_url: str | None = None
    admin_token: str | None = dataclasses.field(default=None, repr=False)
    llm_base_url: str
    llm_api_key: str = dataclasses.field(repr=False)
    llm_timeout: float = 30.0
    llm_retries: int = 2
    workers: int = 2
    job_claim_idle: float = 30.0
    run_timeout: float = 120.0
    models: Mapping[str, Model] = dataclasses.field(default_factory=lambda: DEFAULT_MODELS)
    # Failover and breakers (notes-agents.md § Failover and breakers).
    llm_fallback_base_url: str | None = None
    llm_fallback_api_key: str | None = dataclasses.field(default=None, repr=False)
    breaker_failures: int = 5
    breaker_reset: float = 30.0

    @classmethod
    def _read(cls, env: Env) -> dict[str, Any]:
        shared = super()._read(env)
        if shared["database_url"] is None:
            raise missing_setting("APEX_DATABASE_URL", SERVICE)
        if shared["redis_url"] is None:
            raise missing_setting("APEX_REDIS_URL", SERVICE)
        auth_url = env.url("APEX_AUTH_URL", HTTP_SCHEMES)
        if auth_url is None:
            raise missing_setting("APEX_AUTH_URL", SERVICE)
        llm_base_url = env.url("APEX_LLM_BASE_URL", HTTP_SCHEMES)
        if llm_base_url is None:
            raise missing_setting("APEX_LLM_BASE_URL", SERVICE)
        llm_api_key = env.get("APEX_LLM_API_KEY")
        if llm_api_key is None:
            raise missing_setting("APEX_LLM_API_KEY", SERVICE)
        data_url = env.url("APEX_DATA_URL", HTTP_SCHEMES)
        return {
            **shared,
            "auth_url": auth_url.rstrip("/"),
            "data_url": data_url.rstrip("/") if data_url else None,
            "admin_token": env.get("APEX_ADMIN_TOKEN"),
            "llm_base_url": llm_base_url.rstrip("/"),
            "llm_api_key": llm_api_key,
            "llm_timeout": env.number("APEX_LLM_TIMEOUT", 30.0, unit="seconds"),
            "llm_retries": _count(env, "APEX_LLM_RETRIES", 2, unit="retries"),
            "workers": _count(env, "APEX_AGENTS_WORKERS", 2, unit="worker tasks"),
            "job_claim_idle": env.number("APEX_JOB_CLAIM_IDLE", 30.0, unit="seconds"),
            "run_timeout": env.number("APEX_RUN_TIMEOUT", 120.0, unit="seconds"),
            "models": _models(env, "APEX_MODELS"),
            **_failover(env),
        }


def _failover(env: Env) -> dict[str, Any]:
    """The fallback provider (both of its settings, or neither) and the breakers' window."""
    base_url = env.url("APEX_LLM_FALLBACK_BASE_URL", HTTP_SCHEMES)
    api_key = env.get("APEX_LLM_FALLBACK_API_KEY")
    if base_url is not None and api_key is None:
        raise ConfigError(
            "APEX_LLM_FALLBACK_API_KEY must be set when APEX_LLM_FALLBACK_BASE_URL is"
        )
    if api_key is not None and base_url is None:
        raise ConfigError(
            "APEX_LLM_FALLBACK_BASE_URL must be set when APEX_LLM_FALLBACK_API_KEY is"
        )
    return {
        "llm_fallback_base_url": base_url.rstrip("/") if base_url else None,
        "llm_fallback_api_key": api_key,
        "breaker_failures": env.whole_number("APEX_BREAKER_FAILURES", 5, unit="failures"),
        "breaker_reset": env.number("APEX_BREAKER_RESET", 30.0, unit="seconds"),
    }


def _count(env: Env, variable: str, default: int, *, unit: str) -> int:
    """A whole number >= 0 (0 is meaningful: no retries, no worker tasks)."""
    text = env.get(variable)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{variable} must be a whole number of {unit}, got {text!r}") from None
    if value < 0:
        raise ConfigError(f"{variable} must be 0 or more, got {text!r}")
    return value


def _models(env: Env, variable: str) -> Mapping[str, Model]:
    """JSON ``{model: {context_window, input_micros_per_1k, output_micros_per_1k}}``."""
    text = env.get(variable)
    if text is None:
        return DEFAULT_MODELS
    try:
        table = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{variable} is not valid JSON: {exc}") from None
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"{variable} must be a non-empty JSON object of models")
    models: dict[str, Model] = {}
    for name, entry in table.items():
        if not isinstance(entry, dict) or set(entry) != set(_MODEL_FIELDS):
            raise ConfigError(
                f"{variable}: model {name!r} needs exactly {', '.join(_MODEL_FIELDS)}"
            )
        values = [entry[field] for field in _MODEL_FIELDS]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise ConfigError(f"{variable}: model {name!r}: each value is a whole number >= 0")
        if values[0] < 1:
            raise ConfigError(f"{variable}: model {name!r}: context_window must be at least 1")
        models[name] = Model(*values)
    return MappingProxyType(models)
