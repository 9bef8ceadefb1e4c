"""Every service of the platform started by a test as one set, from one environment
(L2/L3: `Platform.start`), each wired to the others of the set, not to the worker's.

Public: `started_services(platform, settings, per_service={...})` yields a
`ServiceSet`: the running services by topology name (`apex.topology.SERVICES`, in its
order: each after the services it calls), started with `settings` plus the service's
own overrides from `per_service`; a service that calls another (`Service.calls`) is
told where that one of the set is. `ServiceSet.http_urls` are what
`apex.stack.consistency.check_services` and a /healthz probe take (every service answers
plain HTTP on its port, a WebSocket one too); `ServiceSet.reports(admin_token)` are
their `GET /admin/config`, agreeing or not. `reader_token(auth_url, admin_token,
email_domain)` is a context token for apex.data, from that auth, of a new user of a new
tenant who may read usage: what proves that a data service trusts that auth.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from auth_tests.access import context_token
from auth_tests.client import AuthAdmin, login

from apex import topology
from apex.stack.consistency import fetch_report
from apex_testkit import Platform, RunningService
from db_tests.client import AUDIENCE, BILLING_READ

__all__ = ["ServiceSet", "reader_token", "started_services"]


def _http(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"http://{rest}" if sep and scheme in ("ws", "http") else url


@dataclass
class ServiceSet:
    """Running services by topology name."""

    running: dict[str, RunningService]

    @property
    def http_urls(self) -> dict[str, str]:
        """Each service's base URL over plain HTTP."""
        return {name: _http(service.url) for name, service in self.running.items()}

    async def reports(self, admin_token: str) -> dict[str, dict[str, Any]]:
        """Each service's `GET /admin/config`, not compared."""
        return {
            name: await asyncio.to_thread(fetch_report, url, admin_token)
            for name, url in self.http_urls.items()
        }


@contextlib.asynccontextmanager
async def started_services(
    platform: Platform,
    settings: Mapping[str, str] | None = None,
    *,
    per_service: Mapping[str, Mapping[str, str]] | None = None,
) -> AsyncIterator[ServiceSet]:
    """Every service of the topology, started with `settings` (and `per_service[name]`),
    in the topology's order; each stopped (SIGTERM at L3) at the end of the block."""
    overrides = dict(per_service or {})
    unknown = sorted(set(overrides) - set(topology.SERVICES))
    if unknown:
        known = ", ".join(topology.SERVICES)
        raise ValueError(f"no platform service {', '.join(unknown)}; known: {known}")
    async with contextlib.AsyncExitStack() as stack:
        running: dict[str, RunningService] = {}
        for name, service in topology.SERVICES.items():
            calls = {
                setting: _http(running[called].url) for called, setting in service.calls.items()
            }
            env = {**(settings or {}), **calls, **overrides.get(name, {})}
            running[name] = await stack.enter_async_context(platform.start(name, **env))
        yield ServiceSet(running)


async def reader_token(auth_url: str, admin_token: str, email_domain: str) -> str:
    """A context token for apex.data, from the auth at `auth_url`, of a new user of a new
    tenant granted `billing:read`."""
    async with httpx.AsyncClient(base_url=auth_url, timeout=30) as client:
        admin = AuthAdmin(client, admin_token, email_domain)
        user = await admin.key_user(tenant_id=str(uuid.uuid4()))
        granted = await client.put(
            f"/admin/users/{user.user_id}/grants/{BILLING_READ}",
            json={"effect": "allow"},
            headers=admin.headers,
        )
        assert granted.status_code == 200, granted.text
        tokens = await login(client, user.api_key)
        return await context_token(client, tokens, AUDIENCE)
