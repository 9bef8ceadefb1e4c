"""Row-level security: a tenant transaction sees and writes only its own tenant's rows."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from apex.data.tenancy import tenant_transaction


@pytest.fixture(name="conn")
async def _conn(postgres_database: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(postgres_database)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture(name="app_role")
async def _app_role(conn: asyncpg.Connection) -> AsyncIterator[str]:
    # Superusers bypass RLS: the checks run as an ordinary role, made for this test.
    role = f"apex_rls_{uuid.uuid4().hex[:12]}"
    await conn.execute(f"CREATE ROLE {role} NOLOGIN")
    await conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON tenant_settings TO {role}")
    try:
        yield role
    finally:
        await conn.execute(f"REVOKE ALL ON tenant_settings FROM {role}")
        await conn.execute(f"DROP ROLE {role}")


async def test_each_tenant_sees_only_its_rows(conn: asyncpg.Connection, app_role: str) -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    await conn.executemany(
        "INSERT INTO tenant_settings (tenant_id, key, value) VALUES ($1, $2, $3)",
        [(first, "plan", "pro"), (first, "region", "eu"), (second, "plan", "free")],
    )
    try:
        async with tenant_transaction(conn, first):
            await conn.execute(f"SET LOCAL ROLE {app_role}")
            rows = await conn.fetch("SELECT tenant_id, key FROM tenant_settings ORDER BY key")
            assert [(r["tenant_id"], r["key"]) for r in rows] == [
                (first, "plan"),
                (first, "region"),
            ]
            # Updates cannot reach the other tenant's rows either.
            assert await conn.execute("UPDATE tenant_settings SET value = 'x'") == "UPDATE 2"

        async with tenant_transaction(conn, str(second)):
            await conn.execute(f"SET LOCAL ROLE {app_role}")
            assert await conn.fetchval("SELECT count(*) FROM tenant_settings") == 1

        # Without a tenant (setting never defined, or reset to '' after a transaction
        # that set it locally) no row is visible and no query fails.
        async with conn.transaction():
            await conn.execute(f"SET LOCAL ROLE {app_role}")
            assert await conn.fetchval("SELECT count(*) FROM tenant_settings") == 0
    finally:
        await conn.execute(
            "DELETE FROM tenant_settings WHERE tenant_id = ANY($1::uuid[])", [first, second]
        )


async def test_writing_another_tenants_row_is_refused(
    conn: asyncpg.Connection, app_role: str
) -> None:
    mine, theirs = uuid.uuid4(), uuid.uuid4()
    async with tenant_transaction(conn, mine):
        await conn.execute(f"SET LOCAL ROLE {app_role}")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await conn.execute(
                "INSERT INTO tenant_settings (tenant_id, key, value) VALUES ($1, 'k', 'v')", theirs
            )
    assert (
        await conn.fetchval("SELECT count(*) FROM tenant_settings WHERE tenant_id = $1", theirs)
        == 0
    )


async def test_the_setting_ends_with_the_transaction(conn: asyncpg.Connection) -> None:
    tenant = uuid.uuid4()
    async with tenant_transaction(conn, tenant):
        assert await conn.fetchval("SELECT current_setting('apex.tenant_id', true)") == str(tenant)
    assert await conn.fetchval("SELECT current_setting('apex.tenant_id', true)") in ("", None)


async def test_tenant_id_must_be_a_uuid(conn: asyncpg.Connection) -> None:
    with pytest.raises(ValueError, match="tenant_id must be a UUID"):
        async with tenant_transaction(conn, "tenant-1; DROP TABLE users"):
            pass
