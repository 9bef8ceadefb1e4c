"""Fixtures of the ws test package (pytest11 plugin `ws_tests`): fixtures only.

`ws_connect(token)` opens a WebSocket to the gateway wired for the run's level: at L2 the
gateway (and the auth service it trusts) serve on loopback ports in process, kept running
by the worker between tests (its memory reset for each), at L3 they are `python -m
apex.gateway` / `apex.auth` processes, at L4 the target's URLs. Users and tokens are made
with the identity team's client (`auth_tests.client`) on the kit's fixtures
(`ws_auth_client`, `ws_auth_admin`), never with auth_tests' fixtures.
What these fixtures hand out lives in the package's public modules: `client` (the
WebSocket client), `users`, `gateways`, `messages` and `app`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import httpx
import pytest
from auth_tests.access import granted_user
from auth_tests.client import AuthAdmin, run_namespace

from apex_testkit import Level, Platform, tls_context
from ws_tests.client import Connect, WsClient, close_quietly, open_ws
from ws_tests.gateways import Gateways, Serve, admin_headers, http_url, registered
from ws_tests.users import MakeUser, WsUser


@pytest.fixture
async def gateway_url(clean_platform: Platform) -> AsyncIterator[str]:
    """Base URL (ws://...) of the gateway wired for the run's level."""
    async with clean_platform.serve("gateway") as url:
        yield url


@pytest.fixture
async def gateway_http(gateway_url: str, admin_token: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the gateway's own endpoints (/healthz, /metrics, /instances),
    presenting the platform's admin token (which /metrics and /instances require)."""
    async with httpx.AsyncClient(
        base_url=http_url(gateway_url),
        headers=admin_headers(admin_token),
        timeout=30,
        verify=tls_context(),
    ) as client:
        yield client


@pytest.fixture
def ws_connect(gateway_url: str, ws_open: Connect) -> Connect:
    """`await ws_connect(token, last_seq=..., token_in=..., compression=...)`: a
    WsClient of the run's gateway (`ws_open` bound to `gateway_url`; `base_url=` picks
    another instance)."""

    async def connect(token: str | None, **options: Any) -> WsClient:
        return await ws_open(options.pop("base_url", gateway_url), token, **options)

    return connect


@pytest.fixture
async def ws_auth_client(clean_platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of apex.auth wired for the run's level (logout, refresh, sessions:
    auth's own API around a WebSocket). This package's own, not auth_tests' `auth_client`."""
    async with clean_platform.client("auth") as client:
        yield client


@pytest.fixture(scope="session")
def ws_namespace(platform: Platform) -> Iterator[str]:
    """The e-mail domain of the users this worker makes (`auth_tests.client.run_namespace`):
    at L4 one of its own on the shared deployment, whose users are deleted when the worker
    ends; L2/L3 reset their own state."""
    with run_namespace(platform) as domain:
        yield domain


@pytest.fixture
def ws_auth_admin(
    ws_auth_client: httpx.AsyncClient, admin_token: str, ws_namespace: str
) -> AuthAdmin:
    """auth's admin API (`auth_tests.client.AuthAdmin`) on `ws_auth_client`: users, keys,
    in `ws_namespace`."""
    return AuthAdmin(ws_auth_client, admin_token, ws_namespace)


@pytest.fixture
def make_ws_user(ws_auth_admin: AuthAdmin) -> MakeUser:
    """`await make_ws_user(tier="pro", ttl=None, tenant=None, permissions=())`: a new user
    of `tenant` (a tenant id; None: no tenant) with these permissions granted, signed in
    (through `ws_auth_client`)."""

    async def make(
        *,
        tier: str = "pro",
        ttl: int | None = None,
        tenant: str | None = None,
        permissions: Sequence[str] = (),
    ) -> WsUser:
        key_user, tokens = await granted_user(
            ws_auth_admin, permissions=permissions, tier=tier, tenant_id=tenant, ttl=ttl
        )
        return WsUser(key_user, tokens)

    return make


@pytest.fixture
async def ws_user(make_ws_user: MakeUser) -> WsUser:
    """A pro-tier user, signed in."""
    return await make_ws_user()


@pytest.fixture
async def gateways(clean_platform: Platform) -> AsyncIterator[Gateways]:
    """Factory of gateways with their own settings (L2/L3): see Gateways."""
    async with contextlib.AsyncExitStack() as stack:
        yield Gateways(clean_platform, stack)


@pytest.fixture
async def ws_open(serve_gateway: Serve, gateways: Gateways) -> AsyncIterator[Connect]:
    """`await ws_open(base_url, token, **open_ws options)`: a WsClient of any gateway.

    Every connection is closed after the test, before the gateways of `serve_gateway` and
    `gateways` stop (this fixture depends on them, so it is torn down first)."""
    opened: list[WsClient] = []

    async def connect(base_url: str, token: str | None, **options: Any) -> WsClient:
        client = await open_ws(base_url, token, **options)
        opened.append(client)
        return client

    yield connect
    # All at once and bounded: a connection a test froze (never reads) cannot finish a
    # closing handshake, and must not hold the teardown for its full timeout, one by one.
    await asyncio.gather(*(close_quietly(client) for client in opened))


# An L3 gateway outlives tests and each test begins with its Redis namespace flushed: the
# instance is listed again at its next heartbeat (every APEX_WS_INSTANCE_TTL / 3), which
# `serve_gateway` waits for. At the contract's default TTL (5 s) that was 1.55 s of most
# L3 ws tests; 1.2 s renews every 0.4 s and still leaves 0.8 s for a late heartbeat.
REREGISTER_SOON = {"APEX_WS_INSTANCE_TTL": "1.2"}


@pytest.fixture
async def serve_gateway(clean_platform: Platform) -> AsyncIterator[Serve]:
    """`url = await serve_gateway(instance=0, **settings)`: instance N of the worker's
    gateway with these settings, shared with other tests: never stop or kill it, use
    `gateways` for that (L2: the worker's running gateway for these settings, in the kit's
    apps loop, its memory reset for the test; L3: the worker's process for these settings;
    L4: the target, no settings).

    At L3 the instance heart-beats every 0.4 s (`REREGISTER_SOON`) unless the test sets
    APEX_WS_INSTANCE_TTL itself."""
    async with contextlib.AsyncExitStack() as stack:

        async def serve(instance: int = 0, **settings: str) -> str:
            if clean_platform.level is Level.L3:
                settings = {**REREGISTER_SOON, **settings}
            url = await stack.enter_async_context(
                clean_platform.serve("gateway", instance=instance, **settings)
            )
            await registered(url, admin_token=clean_platform.admin_token)
            return url

        yield serve


@pytest.fixture
async def notes_db(postgres_database: str) -> AsyncIterator[Any]:
    """asyncpg connection to the worker's database (the gateway's ws_notes tables; L2/L3)."""
    import asyncpg  # noqa: PLC0415 - only the DB modules need it

    conn = await asyncpg.connect(postgres_database)
    try:
        yield conn
    finally:
        await conn.close()
