"""Fixtures of the auth test package (pytest11 plugin `auth_tests`): fixtures only.

Written once, wired by level: `auth_client` talks to an in-process app at L2, to
`python -m apex.auth` processes at L3 and to the --target deployment at L4. Tests make
their own users and keys through the admin API, so they also run against staging; at L4
in a namespace of their own (`email_domain`: users, IdP users, teams), deleted at the end.
The helpers these fixtures hand out live in the package's public modules: `client`
(admin API, tokens), `flows` (password, TOTP, OIDC), `access` (teams, grants, context
tokens), `events` (the auth:events channel), `faults` (auth behind a Redis fault proxy).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis as AsyncRedis

from apex_testkit import Platform, RedisNamespace
from auth_tests.access import AccessAdmin
from auth_tests.client import AuthAdmin, KeyUser, run_namespace
from auth_tests.events import AuthEvents


@pytest.fixture
async def auth_client(clean_platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of apex.auth, wired for the run's level, on a clean platform."""
    async with clean_platform.client("auth") as client:
        yield client


@pytest.fixture
async def trusting_auth_client(clean_platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    """apex.auth whose OIDC and SAML IdPs may link their logins to the tests' accounts.

    An IdP login links to an existing account only for an address in a domain the IdP is
    trusted for (issue 10); the users the tests make have addresses in this one."""
    async with clean_platform.client(
        "auth",
        APEX_IDP_TRUSTED_DOMAINS="tests.apex.invalid",
        APEX_SAML_TRUSTED_DOMAINS="tests.apex.invalid",
    ) as client:
        yield client


@pytest.fixture(scope="session")
def email_domain(platform: Platform) -> Iterator[str]:
    """The namespace of what this worker writes (`auth_tests.client.run_namespace`): the
    e-mail domain of the users `auth_admin` creates (IdP users: `idp_email(email_domain)`)
    and the prefix of the teams `access_admin` names. L4: one of this run (and worker)
    on the shared deployment, deleted when the worker ends; L2/L3 reset their own state."""
    with run_namespace(platform) as domain:
        yield domain


@pytest.fixture
def auth_admin(auth_client: httpx.AsyncClient, admin_token: str, email_domain: str) -> AuthAdmin:
    """The admin API, to create users (in `email_domain`) and API keys."""
    return AuthAdmin(auth_client, admin_token, email_domain)


@pytest.fixture
async def key_user(auth_admin: AuthAdmin) -> KeyUser:
    """A pro-tier user with one API key."""
    return await auth_admin.key_user()


@pytest.fixture
async def resource_server(auth_admin: AuthAdmin) -> KeyUser:
    """A downstream service's API key: its client credentials authenticate it to
    introspection (RFC 7662 section 2.1)."""
    return await auth_admin.key_user(scopes=())


@pytest.fixture
async def auth_db(postgres_database: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the database behind apex.auth (L2/L3 only: a deployment's is not ours)."""
    conn = await asyncpg.connect(postgres_database)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def access_admin(auth_admin: AuthAdmin) -> AccessAdmin:
    """The admin API of teams and grants, on `auth_client`."""
    return AccessAdmin(auth_admin)


@pytest.fixture
async def other_instance(clean_platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a second auth instance on the same servers (its own memory: L2/L3)."""
    async with clean_platform.client("auth", instance=1) as client:
        yield client


@pytest.fixture
async def auth_events(redis_namespace: RedisNamespace) -> AsyncIterator[AuthEvents]:
    """A subscriber of this worker's `<prefix>auth:events` channel (L2/L3)."""
    client = AsyncRedis.from_url(redis_namespace.url, decode_responses=True)
    pubsub = client.pubsub()
    await pubsub.subscribe(f"{redis_namespace.prefix}auth:events")
    confirmed = await pubsub.get_message(timeout=5)
    assert confirmed is not None, "no subscribe confirmation from Redis"
    assert confirmed["type"] == "subscribe", confirmed
    try:
        yield AuthEvents(pubsub)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
        await client.aclose()
