"""004#11 service discovery health check coordination: the services find each other where
the topology says, and a dependency going down shows in the health of every service that
depends on it, and clears when it comes back.

The rules under test: each service is told where the services it calls are by the
setting `apex.topology` names (`Service.calls`, set by the stack and the kit) and reports
it in `GET /admin/config`; every service's `/healthz` is 503 while Redis (which each one
needs) is down and 200 once it is back (contract-data.md, contract-gateway.md,
notes-identity.md); apex.data's `/healthz` checks apex.auth too: `degraded` (still 200)
while auth is down, its cached keys still verifying context tokens, `ok` once auth is
back (contract-data.md, Routes). The dependency goes down through a FaultProxy in front
of it that every dependent reaches it through: one outage, seen by all.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx
import pytest

from apex import topology
from apex_testkit import FaultProxy, Platform, RedisNamespace, eventually
from db_tests.client import bearer
from db_tests.platform_set import reader_token, started_services

DISCOVERY = pytest.mark.bvj(
    segment="platform", goal="An outage shows in every service it hurts, and so does its end",
    mrr=8000, scenario="004#11",
)  # fmt: skip
pytestmark = [DISCOVERY, pytest.mark.L3]

OUTAGE_SECONDS = 20.0


@contextlib.asynccontextmanager
async def _clients(urls: Mapping[str, str]) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    async with contextlib.AsyncExitStack() as stack:
        yield {
            name: await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=10))
            for name, url in urls.items()
        }


async def _health(clients: Mapping[str, httpx.AsyncClient]) -> dict[str, tuple[int, Any]]:
    answers = await asyncio.gather(*(client.get("/healthz") for client in clients.values()))
    return {
        name: (answer.status_code, answer.json())
        for name, answer in zip(clients, answers, strict=True)
    }


async def test_a_shared_server_down_shows_in_every_service_and_clears(
    clean_platform: Platform,
    redis_namespace: RedisNamespace,
    fault_proxy: Callable[[str], FaultProxy],
    admin_token: str,
) -> None:
    proxy = fault_proxy(redis_namespace.url)
    via_proxy = proxy.url_for(redis_namespace.url)
    async with (
        started_services(clean_platform, {"APEX_REDIS_URL": via_proxy}) as services,
        _clients(services.http_urls) as clients,
    ):
        # Discovery: each caller was given the address of the service it calls, and
        # that address answers as that service.
        reports = await services.reports(admin_token)
        for name, service in topology.SERVICES.items():
            for called, setting in service.calls.items():
                assert reports[name]["settings"][setting] == services.http_urls[called]
        statuses = {name: status for name, (status, _) in (await _health(clients)).items()}
        assert statuses == dict.fromkeys(clients, 200)

        proxy.down()

        async def all_report_redis_down() -> bool:
            health = await _health(clients)
            return all(
                status == 503 and body["checks"]["redis"] != "ok"
                for status, body in health.values()
            )

        await eventually(
            all_report_redis_down, timeout=OUTAGE_SECONDS, message="every service 503 on Redis"
        )

        proxy.up()

        async def all_healthy() -> bool:
            health = await _health(clients)
            return all(
                status == 200 and body["checks"]["redis"] == "ok"
                for status, body in health.values()
            )

        await eventually(all_healthy, timeout=OUTAGE_SECONDS, message="every service 200 again")


async def test_auth_down_shows_in_the_data_service_and_clears(
    clean_platform: Platform,
    fault_proxy: Callable[[str], FaultProxy],
    admin_token: str,
    data_namespace: str,
) -> None:
    async with clean_platform.start("auth") as auth:
        proxy = fault_proxy(auth.url)
        auth_url = proxy.url_for(auth.url)
        async with (
            clean_platform.start("data", APEX_AUTH_URL=auth_url) as data,
            httpx.AsyncClient(base_url=data.url, timeout=10) as client,
        ):
            token = await reader_token(auth.url, admin_token, data_namespace)
            # The first request fetches auth's keys through the proxy (discovery by use).
            assert (await client.get("/v1/usage/summary", headers=bearer(token))).status_code == 200
            health = await client.get("/healthz")
            assert health.json()["status"] == "ok", health.text
            assert health.json()["checks"]["auth"] == "ok"

            proxy.down()

            async def degraded() -> dict[str, Any]:
                answer = await client.get("/healthz")
                body: dict[str, Any] = answer.json()
                return body if answer.status_code == 200 and body["status"] == "degraded" else {}

            body = await eventually(degraded, timeout=OUTAGE_SECONDS, message="data degraded")
            assert body["checks"]["auth"].startswith("down"), body
            # Degraded, not down: the keys it holds still verify context tokens.
            summary = await client.get("/v1/usage/summary", headers=bearer(token))
            assert summary.status_code == 200, summary.text

            proxy.up()

            async def recovered() -> bool:
                answer = await client.get("/healthz")
                return answer.status_code == 200 and answer.json()["checks"]["auth"] == "ok"

            await eventually(recovered, timeout=OUTAGE_SECONDS, message="data ok with auth back")
            assert (await client.get("/healthz")).json()["status"] == "ok"
