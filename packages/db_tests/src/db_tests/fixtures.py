"""Fixtures of the db test package (pytest11 plugin `db_tests`): fixtures only.

`data_client` is an HTTP client of apex.data wired for the run's level (L2: in process,
L3: the worker's `python -m apex.data` process, L4: the target). Users and their
context tokens are made with the identity team's library (`auth_tests.client`, `.access`) on this
package's own fixtures (`data_auth_client`, `data_auth_admin`), never with auth_tests'
fixtures. What the fixtures hand out lives in the public module `client`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import httpx
import pytest
from auth_tests.access import service_user
from auth_tests.client import AuthAdmin, run_namespace

from apex_testkit import Level, Platform, tls_context
from db_tests.client import (
    AUDIENCE,
    DataUser,
    MakeUser,
    OpenData,
    admin_headers,
    purge_tenants,
)
from db_tests.state import Connect
from db_tests.stores import ClickHouseReader, FlowInstance


@pytest.fixture
async def data_client(clean_platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of apex.data wired for the run's level."""
    async with clean_platform.client("data") as client:
        yield client


@pytest.fixture
async def data_with(clean_platform: Platform) -> AsyncIterator[OpenData]:
    """`await data_with(APEX_DB_POOL_SIZE="2", ...)`: an HTTP client of apex.data with
    these settings (L2: in process; L3: the worker's process for these settings)."""
    async with contextlib.AsyncExitStack() as stack:

        async def open_client(**settings: str) -> httpx.AsyncClient:
            client = clean_platform.client("data", instance=0, **settings)
            return await stack.enter_async_context(client)

        yield open_client


@pytest.fixture
async def data_auth_client(clean_platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of apex.auth (this package's own, not auth_tests' `auth_client`)."""
    async with clean_platform.client("auth") as client:
        yield client


@pytest.fixture(scope="session")
def data_namespace(platform: Platform) -> Iterator[str]:
    """The e-mail domain of the users this worker makes (`auth_tests.client.run_namespace`):
    at L4 one of its own on the shared deployment, whose users are deleted when the worker
    ends; L2/L3 reset their own state."""
    with run_namespace(platform) as domain:
        yield domain


@pytest.fixture
def data_auth_admin(
    data_auth_client: httpx.AsyncClient, admin_token: str, data_namespace: str
) -> AuthAdmin:
    """auth's admin API (`auth_tests.client.AuthAdmin`) on `data_auth_client`: users, keys,
    in `data_namespace`."""
    return AuthAdmin(data_auth_client, admin_token, data_namespace)


@pytest.fixture(scope="session")
def data_tenants(platform: Platform) -> Iterator[set[str]]:
    """The tenants of the users this worker makes (`make_data_user` adds them). At L4
    what they wrote to apex.data (usage records, outbox rows, transfers, balances) is
    deleted when the worker ends (`client.purge_tenants`); L2/L3 reset their own state."""
    tenants: set[str] = set()
    yield tenants
    if platform.level is Level.L4 and tenants:
        asyncio.run(_purge(platform, sorted(tenants)))


async def _purge(platform: Platform, tenants: Sequence[str]) -> None:
    async with platform.client("data") as client:
        await purge_tenants(client, platform.admin_token, tenants)


@pytest.fixture
def make_data_user(
    data_auth_client: httpx.AsyncClient, data_auth_admin: AuthAdmin, data_tenants: set[str]
) -> MakeUser:
    """`await make_data_user(tenant=<uuid>|None, permissions=("agents:run", ...))`: a new
    user of `tenant` (default: a new tenant) with these permissions granted, signed in,
    with a context token for apex.data."""

    async def make(*, tenant: str | None = "new", permissions: Sequence[str] = ()) -> DataUser:
        tenant_id = str(uuid.uuid4()) if tenant == "new" else tenant
        if tenant_id is not None:
            data_tenants.add(tenant_id)
        return await service_user(
            data_auth_admin, AUDIENCE, permissions=permissions, tenant_id=tenant_id
        )

    return make


@pytest.fixture
async def data_db(clean_platform: Platform, postgres_database: str) -> AsyncIterator[Any]:
    """asyncpg connection to the worker's database (reset for this test), as the kit's
    superuser (L2/L3): what the tests read to prove state."""
    import asyncpg  # noqa: PLC0415 - only the tests that read the database need it

    conn = await asyncpg.connect(postgres_database)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def db_connect(clean_platform: Platform, postgres_database: str) -> AsyncIterator[Connect]:
    """`conn = await db_connect()`: another asyncpg connection to the worker's database
    (L2/L3), e.g. one that holds locks while `data_db` reads; closed after the test."""
    import asyncpg  # noqa: PLC0415 - only the tests that read the database need it

    opened: list[Any] = []

    async def connect() -> Any:
        conn = await asyncpg.connect(postgres_database)
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        await conn.close()


# -- data-flow: the outbox relay, ClickHouse, views, references, backups, the cache ------


@pytest.fixture
def flow_database(migrated_database: str) -> str:
    """DSN of a database of this test alone, migrated (L2/L3; the kit's clone of the run's
    migrated template). At L3 the worker's other apex.data processes run their relays on
    the worker's database: on this one only the test's own instances move outbox rows."""
    return migrated_database


@pytest.fixture
async def flow_db(flow_database: str) -> AsyncIterator[Any]:
    """asyncpg connection to `flow_database`, as the kit's superuser: what tests read."""
    import asyncpg  # noqa: PLC0415 - only the tests that read the database need it

    conn = await asyncpg.connect(flow_database)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def flow_instance(clean_platform: Platform, flow_database: str) -> FlowInstance:
    """`async with flow_instance(**settings) as client`: an apex.data instance of this test
    alone on `flow_database` without its background relay (APEX_OUTBOX_RELAY=off), so
    outbox rows move only when the test calls `POST /admin/relay/run`."""

    @contextlib.asynccontextmanager
    async def start(**settings: str) -> AsyncIterator[httpx.AsyncClient]:
        env = {"APEX_OUTBOX_RELAY": "off", "APEX_DATABASE_URL": flow_database, **settings}
        async with (
            clean_platform.start("data", **env) as service,
            httpx.AsyncClient(base_url=service.url, timeout=30, verify=tls_context()) as client,
        ):
            yield client

    return start


@pytest.fixture
async def relay_client(flow_instance: FlowInstance) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `flow_instance()`."""
    async with flow_instance() as client:
        yield client


@pytest.fixture
def data_admin(admin_token: str) -> dict[str, str]:
    """The headers of apex.data's /admin/* routes."""
    return admin_headers(admin_token)


@pytest.fixture
def clickhouse(clickhouse_database: str) -> Iterator[ClickHouseReader]:
    """The worker's ClickHouse database, read directly (L2/L3)."""
    reader = ClickHouseReader(clickhouse_database)
    yield reader
    reader.close()
