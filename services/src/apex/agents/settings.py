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
import math
from collections.abc import Mapping
from typing import Any, Final

from apex.agents.config import parse_models, read_config
from apex.agents.costs import DEFAULT_MODELS, Model
from apex.common.settings import HTTP_SCHEMES, ConfigError, Env, ServiceSettings, missing_setting

__all__ = ["AgentSettings"]

SERVICE: Final = "apex.agents"


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
    # A provider's retry without a retry-after waits uniform(0, min(cap, base * 2^n)).
    llm_backoff: tuple[float, float] = (0.05, 1.0)
    workers: int = 2
    job_claim_idle: float = 30.0
    run_timeout: float = 120.0
    models: Mapping[str, Model] = dataclasses.field(default_factory=lambda: DEFAULT_MODELS)
    # -- costs to apex.data and degradation (apex.agents.cost_records, .dependencies) ----
    usage_token: str | None = dataclasses.field(default=None, repr=False)
    cost_batch: int = 100
    cost_interval: float = 1.0
    cost_timeout: float = 5.0
    error_log_interval: float = 60.0
    # State, audit, reload and shutdown (apex.agents.config): the reloadable config file.
    agents_config: str | None = None
    # Tracing (apex.agents.tracing): the OTLP/HTTP traces URL; None: no export.
    otel_endpoint: str | None = None
    # How often spans are exported (the SDK's default is 5 s: a trace would reach the
    # collector long after its run ended).
    otel_export_delay: float = 1.0
    # The response cache and the quality gate (contract: APEX_LLM_CACHE_TTL, 0 = off;
    # APEX_QUALITY_RETRIES, re-asks of a failing answer).
    llm_cache_ttl: float = 3600.0
    quality_retries: int = 1
    # The job queue's retries, aging and per-tenant limits (apex.agents.jobs, .limits).
    job_retries: int = 3
    job_backoff: tuple[float, float] = (0.5, 30.0)
    job_aging: float = 10.0
    tenant_max_running: int = 4
    # Seconds a job of a tenant at tenant_max_running waits before it is read again.
    tenant_wait: float = 0.2
    tenant_max_queued: int = 1000
    tenant_token_budget: int = 1_000_000
    # Failover and breakers (notes-agents.md § Failover and breakers).
    llm_fallback_base_url: str | None = None
    llm_fallback_api_key: str | None = dataclasses.field(default=None, repr=False)
    breaker_failures: int = 5
    breaker_reset: float = 30.0
    # Plan limits (apex.agents.plan_limits): APEX_PLAN_LIMITS on admits runs against the
    # tenant's plan (tokens per day, run submissions per APEX_PLAN_RATE_WINDOW seconds).
    plan_limits: bool = False
    plan_rate_window: float = 60.0
    # Run events to the user's WebSocket connections (apex.agents.run_events): on|off, and
    # the users' logs' cap and TTL, the gateway's own variables (one log, one cap).
    run_events: bool = True
    ws_replay_buffer: int = 1000
    ws_stream_ttl: int = 86_400

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
            "llm_backoff": _backoff(env, "APEX_LLM_BACKOFF", (0.05, 1.0)),
            "workers": _count(env, "APEX_AGENTS_WORKERS", 2, unit="worker tasks"),
            "job_claim_idle": env.number("APEX_JOB_CLAIM_IDLE", 30.0, unit="seconds"),
            "run_timeout": env.number("APEX_RUN_TIMEOUT", 120.0, unit="seconds"),
            "models": _models(env, "APEX_MODELS"),
            # -- costs to apex.data and degradation ------------------------------------
            "usage_token": env.get("APEX_USAGE_TOKEN"),
            "cost_batch": _cost_batch(env),
            "cost_interval": env.number("APEX_COST_INTERVAL", 1.0, unit="seconds"),
            "cost_timeout": env.number("APEX_COST_TIMEOUT", 5.0, unit="seconds"),
            "error_log_interval": env.number("APEX_ERROR_LOG_INTERVAL", 60.0, unit="seconds"),
            "agents_config": _agents_config(env, _models(env, "APEX_MODELS")),
            "otel_endpoint": env.url("APEX_OTEL_ENDPOINT", HTTP_SCHEMES),
            "otel_export_delay": env.number("APEX_OTEL_EXPORT_DELAY", 1.0, unit="seconds"),
            "llm_cache_ttl": _seconds_or_off(env, "APEX_LLM_CACHE_TTL", 3600.0),
            "quality_retries": _count(env, "APEX_QUALITY_RETRIES", 1, unit="re-asks"),
            **_queue_settings(env),
            **_failover(env),
            "plan_limits": env.switch("APEX_PLAN_LIMITS", False),
            "plan_rate_window": env.number("APEX_PLAN_RATE_WINDOW", 60.0, unit="seconds"),
            **_run_events(env),
        }


# The most records apex.data takes in one POST /v1/usage/batch (contract-data.md).
MOST_COST_BATCH: Final = 10_000


def _cost_batch(env: Env) -> int:
    """APEX_COST_BATCH: records per delivery cycle, sent as one batch per tenant."""
    batch = env.whole_number("APEX_COST_BATCH", 100, unit="records")
    if batch > MOST_COST_BATCH:
        raise ConfigError(
            f"APEX_COST_BATCH must be at most {MOST_COST_BATCH} (apex.data's largest "
            f"batch), got {batch}"
        )
    return batch


def _run_events(env: Env) -> dict[str, Any]:
    """Run events to the user's connections: APEX_RUN_EVENTS, and the users' logs' cap and
    TTL as the gateway reads them (APEX_WS_REPLAY_BUFFER, APEX_WS_STREAM_TTL)."""
    return {
        "run_events": env.switch("APEX_RUN_EVENTS", True),
        "ws_replay_buffer": env.whole_number("APEX_WS_REPLAY_BUFFER", 1000),
        "ws_stream_ttl": env.whole_number("APEX_WS_STREAM_TTL", 86_400, unit="seconds"),
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
    return parse_models(table, variable)


def _agents_config(env: Env, models: Mapping[str, Model]) -> str | None:
    """The reloadable config file's path, checked now: a bad file stops the start."""
    path = env.get("APEX_AGENTS_CONFIG")
    if path is not None:
        read_config(path, default_models=models)
    return path


def _seconds_or_off(env: Env, variable: str, default: float) -> float:
    """A finite number of seconds >= 0 (0: off)."""
    text = env.get(variable)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{variable} must be a number of seconds, got {text!r}") from None
    if not 0 <= value < math.inf:
        raise ConfigError(f"{variable} must be a finite number >= 0 (0: off), got {text!r}")
    return value


def _queue_settings(env: Env) -> dict[str, Any]:
    """The job queue's retries, backoff and aging, and the per-tenant limits (and how long
    a job of a tenant at its running limit waits)."""
    return {
        "job_retries": env.whole_number("APEX_JOB_RETRIES", 3, unit="attempts"),
        "job_backoff": _backoff(env, "APEX_JOB_BACKOFF", (0.5, 30.0)),
        "job_aging": env.number("APEX_JOB_AGING", 10.0, unit="seconds"),
        "tenant_max_running": env.whole_number("APEX_TENANT_MAX_RUNNING", 4, unit="runs"),
        "tenant_wait": env.number("APEX_TENANT_WAIT", 0.2, unit="seconds"),
        "tenant_max_queued": env.whole_number("APEX_TENANT_MAX_QUEUED", 1000, unit="runs"),
        "tenant_token_budget": env.whole_number(
            "APEX_TENANT_TOKEN_BUDGET", 1_000_000, unit="tokens"
        ),
    }


def _backoff(env: Env, variable: str, default: tuple[float, float]) -> tuple[float, float]:
    """``base/cap``: seconds, 0 < base <= cap, both finite."""
    text = env.get(variable)
    if text is None:
        return default
    parts = text.split("/")
    try:
        if len(parts) != 2:
            raise ValueError(text)
        base, cap = float(parts[0]), float(parts[1])
    except ValueError:
        raise ConfigError(
            f"{variable} must be `base/cap` in seconds (e.g. 0.5/30), got {text!r}"
        ) from None
    if not (0 < base <= cap < math.inf):
        raise ConfigError(f"{variable} needs finite seconds with 0 < base <= cap, got {text!r}")
    return base, cap
