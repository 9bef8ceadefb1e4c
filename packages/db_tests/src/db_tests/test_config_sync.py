"""004#15 configuration management environment sync: a change to the environment reaches
every service after a restart, a partial rollout is named, and an invalid environment is
refused at start while the running services carry on untouched.

The rules under test (contract-data.md, Cross-service configuration): each service
reports the shared settings it runs with (`GET /admin/config`, `APEX_SETTINGS_VERSION`
names a revision of the environment); `apex.stack.consistency.check_services` names a
setting the services disagree on; a bad setting stops a service at start (exit 2, the
message names the variable) before it serves. Proven by use too: a data service trusts
the context tokens of an auth with the same `APEX_JWT_ISSUER` only.
"""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest

from apex.stack.consistency import ConfigMismatch, check_services
from apex_testkit import Platform
from db_tests.client import bearer
from db_tests.platform_set import ServiceSet, reader_token, started_services

SYNC = pytest.mark.bvj(
    segment="platform", goal="A configuration rollout reaches every service, or is refused",
    mrr=3000, scenario="004#15",
)  # fmt: skip
pytestmark = [SYNC, pytest.mark.L3]

V1 = {"APEX_SETTINGS_VERSION": "004-15-v1", "APEX_JWT_ISSUER": "apex-auth-v1"}
V2 = {"APEX_SETTINGS_VERSION": "004-15-v2", "APEX_JWT_ISSUER": "apex-auth-v2"}


async def _summary_status(data_url: str, token: str) -> int:
    async with httpx.AsyncClient(base_url=data_url, timeout=30) as client:
        response = await client.get("/v1/usage/summary", headers=bearer(token))
        return response.status_code


async def _resolved(services: ServiceSet, admin_token: str) -> set[tuple[str, str]]:
    """(version, issuer) as each service resolved them, once they agree."""
    reports = await asyncio.to_thread(check_services, services.http_urls, admin_token)
    return {
        (r["settings"]["APEX_SETTINGS_VERSION"], r["settings"]["APEX_JWT_ISSUER"])
        for r in reports.values()
    }


async def test_a_changed_environment_reaches_every_service_after_a_restart(
    clean_platform: Platform, admin_token: str, data_namespace: str
) -> None:
    async with started_services(clean_platform, V1) as v1:
        assert await _resolved(v1, admin_token) == {tuple(V1.values())}
        old_token = await reader_token(v1.http_urls["auth"], admin_token, data_namespace)
        assert await _summary_status(v1.http_urls["data"], old_token) == 200
    async with started_services(clean_platform, V2) as v2:
        assert await _resolved(v2, admin_token) == {tuple(V2.values())}
        token = await reader_token(v2.http_urls["auth"], admin_token, data_namespace)
        assert await _summary_status(v2.http_urls["data"], token) == 200
        # The restarted data service runs v2's issuer: v1's tokens are no longer its.
        assert await _summary_status(v2.http_urls["data"], old_token) == 401


async def test_a_partial_rollout_is_named(
    clean_platform: Platform, admin_token: str, data_namespace: str
) -> None:
    async with started_services(clean_platform, V1) as v1:
        # Only data restarted with the new environment (beside the set's auth).
        urls = v1.http_urls
        async with clean_platform.start("data", **V2, APEX_AUTH_URL=urls["auth"]) as new_data:
            urls["data"] = new_data.url
            with pytest.raises(ConfigMismatch) as raised:
                await asyncio.to_thread(check_services, urls, admin_token)
            token = await reader_token(urls["auth"], admin_token, data_namespace)
            # The mismatch is real: the rolled-out data service refuses auth's tokens.
            assert await _summary_status(new_data.url, token) == 401
    message = str(raised.value)
    v1_side = ", ".join(name for name in urls if name != "data")
    version = f"APEX_SETTINGS_VERSION differs: {v1_side} see '004-15-v1'; data sees '004-15-v2'"
    issuer = f"APEX_JWT_ISSUER differs: {v1_side} see 'apex-auth-v1'; data sees 'apex-auth-v2'"
    assert version in message
    assert issuer in message


async def test_an_invalid_environment_is_refused_and_the_running_services_are_untouched(
    clean_platform: Platform, admin_token: str, data_namespace: str
) -> None:
    async with started_services(clean_platform, V1) as v1:
        urls = v1.http_urls
        with pytest.raises(RuntimeError) as refused:
            async with clean_platform.start(
                "data", **V2, APEX_DB_POOL_SIZE="0", APEX_AUTH_URL=urls["auth"]
            ):
                pytest.fail("apex.data served with APEX_DB_POOL_SIZE=0")
        assert "exited with code 2" in str(refused.value)
        assert "APEX_DB_POOL_SIZE must be" in str(refused.value)
        # The running set: every one healthy, still on v1 and agreeing, and working.
        async with contextlib.AsyncExitStack() as stack:
            for name, url in urls.items():
                client = await stack.enter_async_context(httpx.AsyncClient(base_url=url))
                health = await client.get("/healthz")
                assert health.status_code == 200, (name, health.text)
        assert await _resolved(v1, admin_token) == {tuple(V1.values())}
        token = await reader_token(urls["auth"], admin_token, data_namespace)
        assert await _summary_status(urls["data"], token) == 200
