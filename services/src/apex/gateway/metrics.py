"""The gateway's counters and their Prometheus text exposition (``GET /metrics``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from apex.gateway.breaker import BreakerState

__all__ = ["Metrics"]

_COUNTERS: tuple[tuple[str, str], ...] = (
    ("messages_in", "WebSocket messages received from clients"),
    ("messages_out", "WebSocket messages sent to clients"),
    ("reaped", "connections closed because they stopped answering pings"),
    ("rate_limited", "client messages dropped by the per-connection rate limit"),
    ("slow_consumers", "connections closed because their send queue was full"),
)


@dataclasses.dataclass
class Metrics:
    """Counters of one gateway instance; the connection gauge is read at render time."""

    messages_in: int = 0
    messages_out: int = 0
    reaped: int = 0
    rate_limited: int = 0
    slow_consumers: int = 0

    def render(self, connections: int, breakers: Mapping[str, BreakerState]) -> str:
        """Prometheus text format 0.0.4."""
        lines = [
            "# HELP apex_gateway_connections open WebSocket connections",
            "# TYPE apex_gateway_connections gauge",
            f"apex_gateway_connections {connections}",
        ]
        for name, help_text in _COUNTERS:
            metric = f"apex_gateway_{name}_total"
            lines += [
                f"# HELP {metric} {help_text}",
                f"# TYPE {metric} counter",
                f"{metric} {getattr(self, name)}",
            ]
        lines += [
            "# HELP apex_gateway_breaker_state breaker state (0 closed, 1 open, 2 half-open)",
            "# TYPE apex_gateway_breaker_state gauge",
        ]
        lines += [
            f'apex_gateway_breaker_state{{dependency="{dependency}"}} {int(state)}'
            for dependency, state in sorted(breakers.items())
        ]
        return "\n".join(lines) + "\n"
