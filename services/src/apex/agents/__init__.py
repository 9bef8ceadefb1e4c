"""apex.agents: agent orchestration, as a service (issue 12; contract-agents.md).

The service contract (apex.topology): ``load_settings(env)``, then ``create_app(settings)``
gives the ASGI app, whose lifespan starts ``APEX_AGENTS_WORKERS`` worker tasks;
``python -m apex.agents`` serves it, ``python -m apex.agents worker`` runs workers alone,
``python -m apex.agents migrate|rollback|status`` manages the platform's schema (its
tables are in apex.data's migrations: ``notes-agents.md``). Modules: ``settings``,
``definitions`` (versioned agent and tool definitions), ``semver``, ``tools`` (the
built-in tools, argument validation, authorization, the tool-call loop), ``runs`` (the
run state machine in PostgreSQL), ``jobs`` (the Redis Streams queue: priorities with
aging, scheduled jobs, dead letters), ``retries`` (retries with backoff, deferrals, dead
letters), ``limits`` (per-tenant limits at submit), ``worker``, ``llm`` (a provider
through the official ``openai`` SDK), ``failover`` (the providers in order), ``breaker``
(one per provider), ``context`` (the context window), ``cache`` (the
response cache), ``quality`` (the quality gate), ``calls`` (the one agent call path),
``costs`` (the model price table), ``state`` (run states, versions, restore), ``audit``
(the audit trail), ``config`` (the reloadable config), ``metrics``, ``service``,
``routes``, ``definition_routes``, ``app``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from apex.agents.settings import AgentSettings

if TYPE_CHECKING:
    from apex.agents.app import create_app
    from apex.agents.costs import Model, cost_micros

# Imported on first use: `python -m apex.agents migrate` needs none of the service
# (FastAPI, the openai SDK).
_EXPORTS: dict[str, str] = {
    "create_app": "apex.agents.app",
    "Model": "apex.agents.costs",
    "cost_micros": "apex.agents.costs",
}


def load_settings(env: Mapping[str, str] | None = None) -> AgentSettings:
    """The service's settings from `env` (default: the process environment)."""
    return AgentSettings.from_env(env)


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'apex.agents' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = ["AgentSettings", "Model", "cost_micros", "create_app", "load_settings"]
