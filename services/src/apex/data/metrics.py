"""apex.data's metrics, exposed in the Prometheus text format (prometheus-client).

One :class:`Metrics` per app, on its own registry: two apps in one process (L2 tests,
several instances) never share or double-register a metric.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Pool waits are short or a problem: the buckets stop at the longest sane pool timeout.
_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The data service's counters, gauges and histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.pool_connections = Gauge(
            "apex_data_pool_connections",
            "Connections of each pool by state (in_use, idle, waiting: requests queued)",
            ["pool", "state"],
            registry=registry,
        )
        self.pool_wait = Histogram(
            "apex_data_pool_wait_seconds",
            "Seconds a request waited for a pooled connection",
            ["pool"],
            buckets=_WAIT_BUCKETS,
            registry=registry,
        )
        self.replica_lag = Gauge(
            "apex_data_replica_lag_bytes",
            "WAL bytes the replica is behind the primary (last measurement; -1: unreachable)",
            registry=registry,
        )
        self.reads = Counter(
            "apex_data_reads", "Reads served, by source", ["source"], registry=registry
        )
        self.outbox_pending = Gauge(
            "apex_data_outbox_pending", "Outbox rows not relayed yet", registry=registry
        )
        self.relay_rows = Counter(
            "apex_data_relay_rows", "Outbox rows relayed to ClickHouse", registry=registry
        )
        self.cache_requests = Counter(
            "apex_data_cache_requests",
            "Cache lookups, by result (hit, miss)",
            ["result"],
            registry=registry,
        )
        # 001#70: what each cache node's Redis reports, as of the last memory report.
        self.cache_memory = Gauge(
            "apex_data_cache_memory_bytes",
            "Cache node memory as Redis reports it: used, and its maxmemory limit (0: none)",
            ["node", "kind"],
            registry=registry,
        )
        self.cache_evicted = Gauge(
            "apex_data_cache_evicted_keys",
            "Keys a cache node has evicted since it started (Redis INFO evicted_keys)",
            ["node"],
            registry=registry,
        )
        self.cache_warmed = Counter(
            "apex_data_cache_warmed",
            "Cached balances computed ahead of a read (POST /admin/cache/warm, scheduled)",
            registry=registry,
        )
        self.retries = Counter(
            "apex_data_retries",
            "Transactions retried, by reason (deadlock, serialization, connection)",
            ["reason"],
            registry=registry,
        )
        self.failovers = Counter(
            "apex_data_failovers",
            "Times the primary pool found a different writable host",
            registry=registry,
        )
        self.statement_timeouts = Counter(
            "apex_data_statement_timeouts",
            "Queries cancelled by APEX_DB_STATEMENT_TIMEOUT",
            registry=registry,
        )

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)
