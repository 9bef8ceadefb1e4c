"""apex.auth's metrics in the Prometheus text format (prometheus-client), ``GET /metrics``
(admin token): the HTTP requests it answered, by method and status code.

One :class:`Metrics` per app, on its own registry (two apps in one process never share
a metric); :class:`MetricsMiddleware` counts every request as its answer starts (before
the client sees it), refusals of the guard and the body limit included.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE", "Metrics", "MetricsMiddleware"]

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The auth service's counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "apex_auth_requests",
            "HTTP requests answered, by method and status code",
            ["method", "status"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI: counts each HTTP request once its response starts (a request whose
    handler failed before answering counts as the 500 the server sends)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def counting_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                # Counted before the client can see the answer: a scrape that follows a
                # response always includes it.
                self.metrics.requests.labels(scope["method"], str(message["status"])).inc()
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except BaseException:
            if not started:
                self.metrics.requests.labels(scope["method"], "500").inc()
            raise
