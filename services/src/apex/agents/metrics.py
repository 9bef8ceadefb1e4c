"""apex.agents' metrics, exposed in the Prometheus text format (prometheus-client).

One :class:`Metrics` per app, on its own registry (two apps in one process never share a
metric).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The agents service's counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.runs = Counter(
            "apex_agents_runs",
            "Runs by outcome (submitted, succeeded, failed, cancelled, timed_out)",
            ["outcome"],
            registry=registry,
        )
        self.llm_calls = Counter(
            "apex_agents_llm_calls",
            "LLM requests sent, by provider and result (ok, retried, failed)",
            ["provider", "result"],
            registry=registry,
        )
        self.tokens = Counter(
            "apex_agents_tokens",
            "Tokens the providers reported, by model and kind (prompt, completion)",
            ["model", "kind"],
            registry=registry,
        )
        self.cost = Counter(
            "apex_agents_cost_micros",
            "Cost of LLM calls in micro-dollars, by model",
            ["model"],
            registry=registry,
        )
        self.jobs_claimed = Counter(
            "apex_agents_jobs_claimed",
            "Jobs taken over from a consumer that left them unacknowledged (XAUTOCLAIM)",
            registry=registry,
        )
        self.breaker_state = Gauge(
            "apex_agents_breaker_state",
            "Each provider's circuit breaker in this process: 0 closed, 1 open, 2 half-open",
            ["provider"],
            registry=registry,
        )
        self.breaker_opened = Counter(
            "apex_agents_breaker_opened",
            "Times a provider's circuit breaker opened in this process",
            ["provider"],
            registry=registry,
        )

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)
