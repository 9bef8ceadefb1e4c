"""Fixtures of the billing test package (pytest11 plugin `billing_tests`): fixtures only.

`billing_client` is an HTTP client of apex.billing wired for the run's level (L2: in
process; L3: the worker's `python -m apex.billing` process; L4: the target), its payment
provider the kit's `fake_payments`. `billing_data_client` and `billing_agents_client` are
clients of apex.data and apex.agents (metering: usage written there is billed).
`billing_webhooks` serves apex.billing on a socket
and registers it as the provider's webhook endpoint, so the provider's events reach it.
Users and their context tokens are made with the identity team's client
(`auth_tests.access`) on this package's own auth fixtures. What the fixtures hand out
lives in the public module `client`.

At L2/L3 both wait `SHORT_PROVIDER_RETRIES` before the payment SDK's retries of a failing
provider call, not the SDK's 0.5 s and 0.5-1 s (APEX_PAYMENTS_RETRY_DELAY).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import httpx
import pytest
from auth_tests.access import service_user
from auth_tests.client import AuthAdmin, run_namespace

from apex_testkit import FakePayments, Level, Platform, RedisNamespace
from billing_tests.client import AUDIENCE, BillingUser, MakeUser

# A test that fails provider calls (`fake_payments.fail_next`) waits out the SDK's retries:
# 20 ms, then 20-40 ms, instead of 0.5 s, then 0.5-1 s (two retries: 1-1.5 s per call).
SHORT_PROVIDER_RETRIES = {"APEX_PAYMENTS_RETRY_DELAY": "0.02"}


def _provider_retries(platform: Platform) -> dict[str, str]:
    """apex.billing's settings of `billing_client` and `billing_webhooks`: short provider
    retries at L2/L3 (one instance with the same settings for both); none at L4."""
    return {} if platform.level is Level.L4 else SHORT_PROVIDER_RETRIES


@pytest.fixture
async def billing_client(clean_platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of apex.billing wired for the run's level."""
    async with clean_platform.client(
        "billing", instance=0, **_provider_retries(clean_platform)
    ) as client:
        yield client


@pytest.fixture
async def billing_data_client(clean_platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of apex.data (usage is written there, as agents and the gateway do)."""
    async with clean_platform.client("data") as client:
        yield client


@pytest.fixture
async def billing_agents_client(clean_platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of apex.agents (runs whose cost is billed; the kit's `fake_llm`)."""
    async with clean_platform.client("agents") as client:
        yield client


@pytest.fixture
async def billing_webhooks(
    clean_platform: Platform, fake_payments: FakePayments
) -> AsyncIterator[str]:
    """apex.billing served on a socket (L2: in the test's loop; L3: the worker's process)
    and registered as the provider's webhook endpoint for every event; its base URL."""
    async with clean_platform.serve(
        "billing", instance=0, **_provider_retries(clean_platform)
    ) as url:
        fake_payments.add_endpoint(f"{url}/v1/billing/webhooks")
        yield url


@pytest.fixture
async def billing_auth_client(clean_platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of apex.auth (this package's own, not auth_tests' `auth_client`)."""
    async with clean_platform.client("auth") as client:
        yield client


@pytest.fixture(scope="session")
def billing_namespace(platform: Platform) -> Iterator[str]:
    """The e-mail domain of the users this worker makes (`auth_tests.client.run_namespace`)."""
    with run_namespace(platform) as domain:
        yield domain


@pytest.fixture
def billing_auth_admin(
    billing_auth_client: httpx.AsyncClient, admin_token: str, billing_namespace: str
) -> AuthAdmin:
    """auth's admin API (`auth_tests.client.AuthAdmin`) on `billing_auth_client`."""
    return AuthAdmin(billing_auth_client, admin_token, billing_namespace)


@pytest.fixture
def make_billing_user(billing_auth_admin: AuthAdmin) -> MakeUser:
    """`await make_billing_user(permissions=("billing:manage", ...))`: a new user of a new
    tenant with these permissions, signed in, with a context token for apex.billing."""

    async def make(*, permissions: Sequence[str] = ()) -> BillingUser:
        return await service_user(
            billing_auth_admin, AUDIENCE, permissions=permissions, tenant_id=str(uuid.uuid4())
        )

    return make


@pytest.fixture
async def billing_db(clean_platform: Platform, postgres_database: str) -> AsyncIterator[Any]:
    """asyncpg connection to the worker's database (reset for this test), as the kit's
    superuser (L2/L3): what the tests read to prove state (the ledger, invoices)."""
    import asyncpg  # noqa: PLC0415 - only the tests that read the database need it

    conn = await asyncpg.connect(postgres_database)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def billing_redis(redis_namespace: RedisNamespace) -> AsyncIterator[Any]:
    """A Redis client of the worker's namespace (L2/L3): entitlements are read from it."""
    from redis.asyncio import Redis  # noqa: PLC0415 - only the tests that read Redis need it

    client = Redis.from_url(redis_namespace.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()
