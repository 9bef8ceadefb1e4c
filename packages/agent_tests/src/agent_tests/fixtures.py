"""Fixtures of the agent test package (pytest11 plugin `agent_tests`): fixtures only.

`agents_client` is an HTTP client of apex.agents wired for the run's level (L2: in
process, its worker tasks in the app's lifespan; L3: the worker's `python -m apex.agents`
process; L4: the target), its LLM provider the kit's `fake_llm`. Users and their context
tokens are made with the identity team's client (`auth_tests.client`) on this package's
own fixtures (`agent_auth_client`, `agent_auth_admin`). `agent_socket` opens WebSockets
of the gateway with the ws team's client (`ws_tests.client`), never with its fixtures.
What the fixtures hand out lives in the public module `client`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import httpx
import pytest
from auth_tests.access import service_user
from auth_tests.client import AuthAdmin, run_namespace
from ws_tests.client import WsClient, close_quietly, open_ws

from agent_tests.client import (
    AUDIENCE,
    AgentUser,
    MakeUser,
    OpenAgents,
    OpenSocket,
    admin_headers,
)
from apex_testkit import Level, Platform, RedisNamespace, eventually


@pytest.fixture
async def agents_client(clean_platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of apex.agents wired for the run's level."""
    async with clean_platform.client("agents") as client:
        yield client


@pytest.fixture
async def agents_with(
    clean_platform: Platform, redis_namespace: RedisNamespace
) -> AsyncIterator[OpenAgents]:
    """`await agents_with(APEX_LLM_RETRIES="0", ...)`: an HTTP client of apex.agents with
    these settings (L2: in process; L3: the worker's process for these settings).

    Each set of settings gets a job queue of its own (APEX_REDIS_PREFIX: the worker's
    prefix and a digest of the settings, unless the test names one): at L3 the worker's
    processes with other settings, started by earlier tests, keep consuming their queue,
    and must not run this instance's jobs with their settings."""
    async with contextlib.AsyncExitStack() as stack:

        async def open_client(**settings: str) -> httpx.AsyncClient:
            digest = hashlib.sha256(repr(sorted(settings.items())).encode()).hexdigest()[:10]
            settings.setdefault("APEX_REDIS_PREFIX", f"{redis_namespace.prefix}{digest}:")
            client = clean_platform.client("agents", instance=0, **settings)
            return await stack.enter_async_context(client)

        yield open_client


@pytest.fixture
async def agent_socket(clean_platform: Platform) -> AsyncIterator[OpenSocket]:
    """`await agent_socket(user, base_url=None, last_seq=None)`: a WebSocket of the gateway
    wired for the run's level (or of the gateway at `base_url`; `last_seq`: resume after
    it), a `ws_tests.client.WsClient`, welcomed, signed in with the user's access token;
    every socket is closed after the test."""
    opened: list[WsClient] = []
    async with clean_platform.serve("gateway") as url:

        async def connect(
            user: AgentUser, *, base_url: str | None = None, last_seq: int | None = None
        ) -> WsClient:
            client = await open_ws(base_url or url, user.tokens.access, last_seq=last_seq)
            opened.append(client)
            return client

        try:
            yield connect
        finally:
            await asyncio.gather(*(close_quietly(client) for client in opened))


@pytest.fixture
async def agent_auth_client(clean_platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of apex.auth (this package's own, not auth_tests' `auth_client`)."""
    async with clean_platform.client("auth") as client:
        yield client


@pytest.fixture(scope="session")
def agent_namespace(platform: Platform) -> Iterator[str]:
    """The e-mail domain of the users this worker makes (`auth_tests.client.run_namespace`):
    at L4 one of its own on the shared deployment, whose users are deleted when the worker
    ends; L2/L3 reset their own state."""
    with run_namespace(platform) as domain:
        yield domain


@pytest.fixture
def agent_auth_admin(
    agent_auth_client: httpx.AsyncClient, admin_token: str, agent_namespace: str
) -> AuthAdmin:
    """auth's admin API (`auth_tests.client.AuthAdmin`) on `agent_auth_client`."""
    return AuthAdmin(agent_auth_client, admin_token, agent_namespace)


@pytest.fixture(scope="session")
def agent_tenants(platform: Platform) -> Iterator[set[str]]:
    """The tenants of the users this worker makes (`make_agent_user` adds them). Their
    runs' costs reach apex.data: at L4, when the worker ends, once apex.agents has sent
    every cost record, what they wrote to apex.data is deleted (`POST
    /admin/tenants/purge`); L2/L3 reset their own state."""
    tenants: set[str] = set()
    yield tenants
    if platform.level is Level.L4 and tenants:
        asyncio.run(_purge_costs(platform, sorted(tenants)))


async def _purge_costs(platform: Platform, tenants: Sequence[str]) -> None:
    headers = admin_headers(platform.admin_token)
    async with platform.client("agents") as agents:

        async def delivered() -> bool:
            response = await agents.get("/admin/costs", headers=headers)
            if response.status_code == 404:
                return True  # this deployment sends no costs to apex.data
            assert response.status_code == 200, response.text
            return bool(response.json()["waiting"] == 0)

        await eventually(delivered, timeout=60, message="every cost record sent to apex.data")
    async with platform.client("data") as data:
        response = await data.post(
            "/admin/tenants/purge", json={"tenant_ids": list(tenants)}, headers=headers
        )
        assert response.status_code == 200, response.text


@pytest.fixture
def make_agent_user(
    agent_auth_client: httpx.AsyncClient, agent_auth_admin: AuthAdmin, agent_tenants: set[str]
) -> MakeUser:
    """`await make_agent_user(tenant=<uuid>|None, permissions=("agents:run", ...))`: a new
    user of `tenant` (default: a new tenant) with these permissions granted, signed in,
    with a context token for apex.agents."""

    async def make(*, tenant: str | None = "new", permissions: Sequence[str] = ()) -> AgentUser:
        tenant_id = str(uuid.uuid4()) if tenant == "new" else tenant
        if tenant_id is not None:
            agent_tenants.add(tenant_id)
        return await service_user(
            agent_auth_admin, AUDIENCE, permissions=permissions, tenant_id=tenant_id
        )

    return make


@pytest.fixture
async def agents_db(clean_platform: Platform, postgres_database: str) -> AsyncIterator[Any]:
    """asyncpg connection to the worker's database (reset for this test), as the kit's
    superuser (L2/L3): what the tests read to prove state (`agent_runs`)."""
    import asyncpg  # noqa: PLC0415 - only the tests that read the database need it

    conn = await asyncpg.connect(postgres_database)
    try:
        yield conn
    finally:
        await conn.close()
