"""003 multi-tenant config isolation: a tenant's settings never leak to another tenant.

`PUT/GET /tenants/{tid}/settings[/{key}]` (Bearer): allowed only when the token's tid is
{tid}; anything else is 404 `not_found`, never 403, so nobody can probe which tenants
exist. Underneath, PostgreSQL row-level security does the filtering: checked here with
direct queries as the non-superuser role `apex_tenant` (L2/L3: our database).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from auth_tests.client import AuthAdmin, Tokens, error_of, login

ISOLATION = pytest.mark.bvj(
    segment="enterprise", goal="Enterprise security: tenant configuration never leaks",
    mrr=200000, scenario="003:multi-tenant config isolation",
)  # fmt: skip
pytestmark = [ISOLATION]


async def _tenant_user(
    client: httpx.AsyncClient, auth_admin: AuthAdmin, tenant: str | None
) -> Tokens:
    user = await auth_admin.key_user(tenant_id=tenant)
    return await login(client, user.api_key)


async def _put(
    client: httpx.AsyncClient, tokens: Tokens, tenant: str, key: str, value: str
) -> httpx.Response:
    return await client.put(
        f"/tenants/{tenant}/settings/{key}", json={"value": value}, headers=tokens.bearer
    )


def _as_map(body: Any) -> dict[str, str]:
    """The settings of GET /tenants/{tid}/settings as {key: value}."""
    settings = body.get("settings", body) if isinstance(body, dict) else body
    if isinstance(settings, dict):
        return {str(k): str(v) for k, v in settings.items()}
    assert isinstance(settings, list), body
    return {str(item["key"]): str(item["value"]) for item in settings}


async def _settings(client: httpx.AsyncClient, tokens: Tokens, tenant: str) -> dict[str, str]:
    response = await client.get(f"/tenants/{tenant}/settings", headers=tokens.bearer)
    assert response.status_code == 200, response.text
    return _as_map(response.json())


async def _value(client: httpx.AsyncClient, tokens: Tokens, tenant: str, key: str) -> str:
    response = await client.get(f"/tenants/{tenant}/settings/{key}", headers=tokens.bearer)
    assert response.status_code == 200, response.text
    value: str = response.json()["value"]
    return value


def _not_found(response: httpx.Response) -> tuple[int, str]:
    assert response.status_code < 500, response.text
    return response.status_code, error_of(response) if response.status_code >= 400 else ""


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_a_tenant_reads_and_changes_its_own_settings(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin
) -> None:
    tenant = str(uuid.uuid4())
    tokens = await _tenant_user(auth_client, auth_admin, tenant)
    colleague = await _tenant_user(auth_client, auth_admin, tenant)

    for key, value in (("llm.model", "gpt-x"), ("budget.monthly", "1000")):
        response = await _put(auth_client, tokens, tenant, key, value)
        assert response.status_code == 200, response.text
    assert (await _put(auth_client, tokens, tenant, "budget.monthly", "2500")).status_code == 200

    expected = {"llm.model": "gpt-x", "budget.monthly": "2500"}
    assert await _settings(auth_client, tokens, tenant) == expected
    assert await _settings(auth_client, colleague, tenant) == expected, "same tenant, same view"
    assert await _value(auth_client, colleague, tenant, "budget.monthly") == "2500"
    missing = await auth_client.get(f"/tenants/{tenant}/settings/nope", headers=tokens.bearer)
    assert _not_found(missing) == (404, "not_found")


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_another_tenant_sees_nothing_and_changes_nothing_404_not_403(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin
) -> None:
    tenant_a, tenant_b = str(uuid.uuid4()), str(uuid.uuid4())
    alice = await _tenant_user(auth_client, auth_admin, tenant_a)
    bob = await _tenant_user(auth_client, auth_admin, tenant_b)
    assert (await _put(auth_client, bob, tenant_b, "secret.key", "b-secret")).status_code < 300
    assert (await _put(auth_client, alice, tenant_a, "secret.key", "a-secret")).status_code < 300

    attempts = [
        await auth_client.get(f"/tenants/{tenant_b}/settings", headers=alice.bearer),
        await auth_client.get(f"/tenants/{tenant_b}/settings/secret.key", headers=alice.bearer),
        await _put(auth_client, alice, tenant_b, "secret.key", "overwritten-by-a"),
        await _put(auth_client, alice, tenant_b, "planted.key", "planted-by-a"),
    ]
    for response in attempts:
        assert _not_found(response) == (404, "not_found"), (
            f"{response.request.method} {response.request.url.path}: {response.text}"
        )
        assert "b-secret" not in response.text

    assert await _settings(auth_client, bob, tenant_b) == {"secret.key": "b-secret"}
    assert await _settings(auth_client, alice, tenant_a) == {"secret.key": "a-secret"}


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_no_tenant_can_be_probed(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin
) -> None:
    """An existing tenant, an unknown one and a malformed id answer the same."""
    existing = str(uuid.uuid4())
    owner = await _tenant_user(auth_client, auth_admin, existing)
    assert (await _put(auth_client, owner, existing, "k", "v")).status_code < 300
    outsider = await _tenant_user(auth_client, auth_admin, str(uuid.uuid4()))
    tenantless = await _tenant_user(auth_client, auth_admin, None)

    answers = set()
    for tokens in (outsider, tenantless):
        for tenant in (existing, str(uuid.uuid4()), "not-a-uuid", "null", "%00"):
            for path in (f"/tenants/{tenant}/settings", f"/tenants/{tenant}/settings/k"):
                response = await auth_client.get(path, headers=tokens.bearer)
                answers.add((response.status_code, error_of(response)))
    assert answers == {(404, "not_found")}


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_settings_need_an_access_token(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin
) -> None:
    tenant = str(uuid.uuid4())
    for headers in ({}, {"Authorization": "Bearer not.a.jwt"}, auth_admin.headers):
        response = await auth_client.get(f"/tenants/{tenant}/settings", headers=headers)
        assert (response.status_code, error_of(response)) == (401, "invalid_token")
        put = await auth_client.put(
            f"/tenants/{tenant}/settings/k", json={"value": "v"}, headers=headers
        )
        assert (put.status_code, error_of(put)) == (401, "invalid_token")
    bare = await auth_client.get(f"/tenants/{tenant}/settings")
    assert (bare.status_code, error_of(bare)) == (401, "invalid_token")


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_concurrent_writes_of_two_tenants_to_the_same_key_never_mix(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin
) -> None:
    tenants = [str(uuid.uuid4()) for _ in range(2)]
    users = [await _tenant_user(auth_client, auth_admin, t) for t in tenants]

    writes = [
        _put(auth_client, users[i], tenants[i], "shared.name", f"{i}-{n}")
        for n in range(10)
        for i in range(2)
    ]
    for response in await asyncio.gather(*writes):
        assert response.status_code < 300, response.text

    for i in range(2):
        settings = await _settings(auth_client, users[i], tenants[i])
        assert list(settings) == ["shared.name"]
        assert settings["shared.name"].startswith(f"{i}-"), settings


@pytest.mark.L2
@pytest.mark.L3
async def test_settings_changes_are_audited(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin
) -> None:
    tenant = str(uuid.uuid4())
    user = await auth_admin.key_user(tenant_id=tenant)
    tokens = await login(auth_client, user.api_key)
    assert (await _put(auth_client, tokens, tenant, "audited.key", "v1")).status_code < 300

    events = await auth_admin.audit(user.user_id)
    setting_events = [e for e in events if "setting" in e["action"]]
    assert setting_events, [e["action"] for e in events]
    assert "audited.key" in str(setting_events[-1]), setting_events[-1]


# --- row-level security, straight in PostgreSQL (our database: L2/L3) ---------------------


async def _as_tenant_role(conn: asyncpg.Connection, tenant: str | None) -> None:
    """Inside a transaction: become apex_tenant, optionally scoped to `tenant`."""
    await conn.execute("SET LOCAL ROLE apex_tenant")
    if tenant is not None:
        await conn.execute("SELECT set_config('apex.tenant_id', $1, true)", tenant)


@pytest.mark.L2
@pytest.mark.L3
async def test_row_level_security_hides_other_tenants_rows_from_apex_tenant(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin, auth_db: asyncpg.Connection
) -> None:
    tenant_a, tenant_b = str(uuid.uuid4()), str(uuid.uuid4())
    alice = await _tenant_user(auth_client, auth_admin, tenant_a)
    bob = await _tenant_user(auth_client, auth_admin, tenant_b)
    assert (await _put(auth_client, alice, tenant_a, "k", "a")).status_code < 300
    assert (await _put(auth_client, bob, tenant_b, "k", "b")).status_code < 300
    assert (await _put(auth_client, bob, tenant_b, "k2", "b2")).status_code < 300

    role = await auth_db.fetchrow(
        "SELECT rolsuper, rolbypassrls, rolcanlogin FROM pg_roles WHERE rolname = 'apex_tenant'"
    )
    assert role is not None, "migration 0008 creates the role apex_tenant"
    assert (role["rolsuper"], role["rolbypassrls"]) == (False, False), dict(role)
    table = await auth_db.fetchrow(
        "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE relname = 'tenant_settings'"
    )
    assert table is not None
    assert tuple(table) == (True, True), "RLS enabled and forced"

    async with auth_db.transaction():
        await _as_tenant_role(auth_db, None)
        unscoped = await auth_db.fetch("SELECT tenant_id, key FROM tenant_settings")
        assert unscoped == [], "without a tenant, apex_tenant sees nothing"
    async with auth_db.transaction():
        await _as_tenant_role(auth_db, tenant_a)
        rows = await auth_db.fetch("SELECT tenant_id::text AS t, key, value FROM tenant_settings")
        assert [(r["t"], r["key"], r["value"]) for r in rows] == [(tenant_a, "k", "a")]
        # Not even a WHERE naming the other tenant gets through.
        assert (
            await auth_db.fetchval(
                "SELECT count(*) FROM tenant_settings WHERE tenant_id = $1::uuid", tenant_b
            )
            == 0
        )
        changed = await auth_db.execute(
            "UPDATE tenant_settings SET value = 'hacked' WHERE tenant_id = $1::uuid", tenant_b
        )
        assert changed == "UPDATE 0"
        deleted = await auth_db.execute(
            "DELETE FROM tenant_settings WHERE tenant_id = $1::uuid", tenant_b
        )
        assert deleted == "DELETE 0"
    async with auth_db.transaction():
        await _as_tenant_role(auth_db, tenant_a)
        insert = "INSERT INTO tenant_settings (tenant_id, key, value) VALUES ($1::uuid, 'x', 'y')"
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await auth_db.execute(insert, tenant_b)
    assert await _settings(auth_client, bob, tenant_b) == {"k": "b", "k2": "b2"}, "B untouched"


@pytest.mark.L2
@pytest.mark.L3
async def test_tenant_transaction_filters_even_a_superuser_connection(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin, auth_db: asyncpg.Connection
) -> None:
    """`apex.data.tenancy.tenant_transaction` switches to apex_tenant, so RLS applies even on
    the superuser connection the test kit hands out."""
    from apex.data.tenancy import tenant_transaction  # noqa: PLC0415 - the SUT's helper

    tenant_a, tenant_b = str(uuid.uuid4()), str(uuid.uuid4())
    for tenant in (tenant_a, tenant_b):
        tokens = await _tenant_user(auth_client, auth_admin, tenant)
        assert (await _put(auth_client, tokens, tenant, "k", tenant[:8])).status_code < 300
    assert await auth_db.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")

    async with tenant_transaction(auth_db, tenant_a):
        rows = await auth_db.fetch("SELECT tenant_id::text AS t, value FROM tenant_settings")
        assert [(r["t"], r["value"]) for r in rows] == [(tenant_a, tenant_a[:8])]
        assert await auth_db.fetchval("SELECT current_user") == "apex_tenant"
    # The role switch is LOCAL: it ends with the transaction.
    assert await auth_db.fetchval("SELECT current_user") != "apex_tenant"
    assert await auth_db.fetchval("SELECT count(*) FROM tenant_settings") >= 2


@pytest.mark.L2
@pytest.mark.L3
async def test_a_query_that_forgets_the_tenant_context_sees_nothing(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin, postgres_database: str
) -> None:
    """Issue 10: isolation must not rest on every route remembering `tenant_transaction`.
    A connection of the services' own pool (`apex.data.pool.create_pool`, where every
    route gets its connection, here on the worker's superuser login) that never names a
    tenant reads no tenant's rows and writes none; naming one still works."""
    from apex.data.pool import create_pool  # noqa: PLC0415 - the SUT's pool, as a route has it
    from apex.data.tenancy import tenant_transaction  # noqa: PLC0415

    tenant_a, tenant_b = str(uuid.uuid4()), str(uuid.uuid4())
    alice = await _tenant_user(auth_client, auth_admin, tenant_a)
    bob = await _tenant_user(auth_client, auth_admin, tenant_b)
    assert (await _put(auth_client, alice, tenant_a, "secret", "a")).status_code == 200
    assert (await _put(auth_client, bob, tenant_b, "secret", "b")).status_code == 200

    pool = await create_pool(postgres_database, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            assert await conn.fetch("SELECT tenant_id, key, value FROM tenant_settings") == []
            assert await conn.execute("UPDATE tenant_settings SET value = 'x'") == "UPDATE 0"
            assert await conn.execute("DELETE FROM tenant_settings") == "DELETE 0"
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(
                    "INSERT INTO tenant_settings (tenant_id, key, value) "
                    "VALUES ($1::uuid, 'planted', 'x')",
                    tenant_b,
                )
        async with pool.acquire() as conn, tenant_transaction(conn, tenant_a):
            rows = await conn.fetch("SELECT key, value FROM tenant_settings")
            assert [(r["key"], r["value"]) for r in rows] == [("secret", "a")]
        async with pool.acquire() as conn:  # the tenant ended with its transaction
            assert await conn.fetchval("SELECT count(*) FROM tenant_settings") == 0
    finally:
        await pool.close()

    assert await _settings(auth_client, alice, tenant_a) == {"secret": "a"}
    assert await _settings(auth_client, bob, tenant_b) == {"secret": "b"}
