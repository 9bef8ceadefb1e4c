"""Row-level security: a tenant transaction sees and writes only its own tenant's rows.

The test connects as the worker database's (superuser) owner: tenant_transaction's
``SET LOCAL ROLE apex_tenant`` is what makes the policies apply.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from apex.data.tenancy import TENANT_ROLE, tenant_transaction


@pytest.fixture(name="conn")
async def _conn(postgres_database: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(postgres_database)
    try:
        yield conn
    finally:
        await conn.close()


async def test_each_tenant_sees_only_its_rows(conn: asyncpg.Connection) -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    await conn.executemany(
        "INSERT INTO tenant_settings (tenant_id, key, value) VALUES ($1, $2, $3)",
        [(first, "plan", "pro"), (first, "region", "eu"), (second, "plan", "free")],
    )
    try:
        async with tenant_transaction(conn, first):
            assert await conn.fetchval("SELECT current_user") == TENANT_ROLE
            rows = await conn.fetch("SELECT tenant_id, key FROM tenant_settings ORDER BY key")
            assert [(r["tenant_id"], r["key"]) for r in rows] == [
                (first, "plan"),
                (first, "region"),
            ]
            # Updates cannot reach the other tenant's rows either.
            assert await conn.execute("UPDATE tenant_settings SET value = 'x'") == "UPDATE 2"

        async with tenant_transaction(conn, str(second)):
            assert await conn.fetchval("SELECT count(*) FROM tenant_settings") == 1

        # Without a tenant (setting never defined, or reset to '' after a transaction
        # that set it locally) no row is visible and no query fails.
        async with conn.transaction():
            await conn.execute(f"SET LOCAL ROLE {TENANT_ROLE}")
            assert await conn.fetchval("SELECT count(*) FROM tenant_settings") == 0
        # Outside a tenant transaction the connection is itself again (and, as a
        # superuser, sees every row).
        assert await conn.fetchval("SELECT current_user") != TENANT_ROLE
    finally:
        await conn.execute(
            "DELETE FROM tenant_settings WHERE tenant_id = ANY($1::uuid[])", [first, second]
        )


async def test_writing_another_tenants_row_is_refused(conn: asyncpg.Connection) -> None:
    mine, theirs = uuid.uuid4(), uuid.uuid4()
    async with tenant_transaction(conn, mine):
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


async def test_the_tenant_role_may_touch_only_tenant_tables(conn: asyncpg.Connection) -> None:
    async with tenant_transaction(conn, uuid.uuid4()):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetchval("SELECT count(*) FROM users")
