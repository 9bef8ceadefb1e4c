"""apex.agents' metrics, exposed in the Prometheus text format (prometheus-client).

One :class:`Metrics` per app, on its own registry (two apps in one process never share a
metric).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
# apex_agents_run_seconds' buckets: a cached answer, a quick model, a slow one, up to the
# default APEX_RUN_TIMEOUT (120 s).
RUN_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# apex_agents_gc_pause_seconds' buckets: 0.1 ms (a young collection) to 0.5 s.
GC_PAUSE_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5)


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
        self.cache = Counter(
            "apex_agents_cache",
            "Response cache lookups by result (hit, miss); a request not cached is not counted",
            ["result"],
            registry=registry,
        )
        self.quality = Counter(
            "apex_agents_quality",
            "Answers checked by the quality gate, by verdict (passed, failed)",
            ["verdict"],
            registry=registry,
        )
        self.job_retries = Counter(
            "apex_agents_job_retries",
            "Job attempts that failed and were queued again after their backoff",
            registry=registry,
        )
        self.jobs_deferred = Counter(
            "apex_agents_jobs_deferred",
            "Jobs read while their tenant was at APEX_TENANT_MAX_RUNNING, read again later",
            registry=registry,
        )
        self.dead_letters = Counter(
            "apex_agents_jobs_dead",
            "Jobs moved to the dead-letter stream",
            registry=registry,
        )
        # -- error aggregation (001#88) --------------------------------------------------
        self.step_errors = Counter(
            "apex_agents_step_errors",
            "Agent calls (a run's step) that ended without an answer, by error",
            ["error"],
            registry=registry,
        )

        self.run_seconds = Histogram(
            "apex_agents_run_seconds",
            "Seconds a worker spent on a job's run, from taking the job to its run's end "
            "(one observation per job worked to the end, not for a cancelled one)",
            buckets=RUN_SECONDS_BUCKETS,
            registry=registry,
        )
        self.gc_pause = Histogram(
            "apex_agents_gc_pause_seconds",
            "Garbage-collection pauses of the process, by generation (gc.callbacks)",
            ["generation"],
            buckets=GC_PAUSE_BUCKETS,
            registry=registry,
        )

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)
