"""Gateways as a test sees them: its own instances, their HTTP endpoints, their metrics.

Public: `Gateways` (start gateways with their own settings, L2/L3; what the `gateways`
fixture hands out) and `GatewayHandle` (one of them: URL, stop, kill, /healthz and its
connection count, /metrics, /instances), `Serve` (the type of the `serve_gateway`
fixture), `registered` (wait until a gateway lists itself), `FAST` (settings that lift
the rate limits), Prometheus text parsing (`metric`, `has_metric`), ws:// <-> http://
URLs and `admin_headers` (the platform's admin token, which /metrics and /instances
require).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from apex_testkit import Level, Platform, RunningService, eventually, tls_context
from ws_tests.client import DEFAULT_TIMEOUT

__all__ = [
    "FAST",
    "GatewayHandle",
    "Gateways",
    "Serve",
    "admin_headers",
    "has_metric",
    "http_url",
    "metric",
    "registered",
    "ws_url",
]

# A gateway that lets a test publish hundreds of messages on one connection quickly.
FAST = {"APEX_WS_RATE": "100000/1", "APEX_WS_RATE_VIOLATIONS": "1000"}
# `url = await serve_gateway(instance=0, **settings)`: what `serve_gateway` hands out.
Serve = Callable[..., Awaitable[str]]


def http_url(ws_url: str) -> str:
    """http://host:port of a ws://host:port URL (the gateway's HTTP endpoints)."""
    return ws_url.replace("ws", "http", 1) if ws_url.startswith("ws") else ws_url


def ws_url(url: str) -> str:
    """ws://host:port of an http://host:port URL."""
    return url.replace("http", "ws", 1) if url.startswith("http") else url


def admin_headers(admin_token: str) -> dict[str, str]:
    """The headers of a request to the gateway's operator endpoints (/metrics, /instances)."""
    return {"Authorization": f"Bearer {admin_token}"}


@dataclass
class GatewayHandle:
    """One gateway a test started (`gateways.start`): its URL, graceful stop and, at L3,
    crash (the kit's `platform.start("gateway")` does the wiring); its HTTP endpoints are
    asked with the platform's admin token."""

    url: str
    settings: dict[str, str]
    service: RunningService
    admin_token: str

    @property
    def http(self) -> str:
        return http_url(self.url)

    async def stop(self) -> None:
        """Graceful: SIGTERM at L3 (drain, exit 0), the gateway's own shutdown at L2."""
        await self.service.stop()

    async def kill(self) -> None:
        """A crash (L3 only): SIGKILL, no goodbye."""
        await self.service.kill()

    async def get(self, path: str, timeout: float = 10.0) -> httpx.Response:
        """GET `path` of this gateway, with the admin token."""
        async with httpx.AsyncClient(
            base_url=self.http,
            headers=admin_headers(self.admin_token),
            timeout=timeout,
            verify=tls_context(),
        ) as client:
            return await client.get(path)

    async def healthz(self) -> httpx.Response:
        return await self.get("/healthz")

    async def connections(self) -> int:
        """How many WebSocket connections this instance holds (its /healthz count)."""
        response = await self.healthz()
        assert response.status_code == 200, response.text
        count: int = response.json()["connections"]
        return count

    async def metrics(self) -> str:
        response = await self.get("/metrics")
        assert response.status_code == 200, response.text
        return response.text

    async def instances(self) -> list[dict[str, Any]]:
        response = await self.get("/instances")
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()["instances"]
        return found


class Gateways:
    """`await gateways.start(APEX_WS_RATE="5/1", ...)`: a fresh gateway with these
    settings on this worker's servers (L2: in the test's event loop, L3: a process of its
    own, not shared with other tests, so it may be stopped or killed). All are stopped
    after the test. `auth_url` is the auth service they trust (override with APEX_AUTH_URL)."""

    def __init__(self, platform: Platform, stack: contextlib.AsyncExitStack) -> None:
        self.platform = platform
        self.stack = stack
        self.started: list[GatewayHandle] = []

    async def auth_url(self) -> str:
        """A base URL of the auth service, e.g. to put a fault proxy in front of it
        (`start(APEX_AUTH_URL=proxy.url_for(url))`)."""
        return await self.stack.enter_async_context(self.platform.serve("auth"))

    async def start(self, **settings: str) -> GatewayHandle:
        if self.platform.level is Level.L4:
            pytest.fail("gateways.start() exists at L2/L3 only: mark the test so", pytrace=False)
        running = await self.stack.enter_async_context(self.platform.start("gateway", **settings))
        handle = GatewayHandle(running.url, settings, running, self.platform.admin_token)
        self.started.append(handle)
        return handle


async def registered(url: str, *, admin_token: str, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Wait until the gateway at `url` lists itself in /instances (asked with the
    platform's `admin_token`).

    An L3 gateway outlives tests, and each test starts with an empty Redis namespace
    (clean_platform): its registration is back at its next heartbeat. Until then other
    instances take it for dead (leadership, routing), as after a Redis flush in production.
    """
    async with httpx.AsyncClient(
        base_url=http_url(url), headers=admin_headers(admin_token), timeout=30, verify=tls_context()
    ) as http:
        me = (await http.get("/healthz")).json()["instance"]

        async def listed() -> bool:
            instances = (await http.get("/instances")).json()["instances"]
            return any(entry["id"] == me for entry in instances)

        await eventually(listed, timeout=timeout, message=f"gateway {me} registered")


def metric(text: str, name: str, **labels: str) -> float:
    """The value of sample `name{labels}` in Prometheus text (0.0 when absent)."""
    total = 0.0
    found = False
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        sample, _, label_text = head.partition("{")
        if sample.strip() != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', label_text))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(value)
            found = True
    return total if found else 0.0


def has_metric(text: str, name: str) -> bool:
    """Whether Prometheus text has any sample of `name` (whatever its labels and value)."""
    return any(
        line.split("{")[0].split(" ")[0] == name
        for line in text.splitlines()
        if line and not line.startswith("#")
    )
