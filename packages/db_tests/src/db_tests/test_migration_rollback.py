"""001#54 migration sequencing, 002#9 migration rollback with data preserved.

The rules under test (contract-data.md, Behaviours: Migrations): a rollback keeps the
data of the tables it keeps; APEX_MIGRATION_LOCK_TIMEOUT bounds how long a migration's
DDL waits behind traffic: past it the migration fails with an error naming the setting,
applies nothing, and the traffic it waited for is untouched. L2 runs the library
(`apex.data.migrations`), L3 the `python -m apex.data migrate|rollback` process.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

import asyncpg
import pytest

from apex.data.migrations import MigrationError, migrate, rollback, status
from db_tests.stores import write_usage

SEQUENCING = pytest.mark.bvj(
    segment="platform", goal="A deployment's schema change never stalls live traffic",
    mrr=6000, scenario="001#54",
)  # fmt: skip
ROLLBACK = pytest.mark.bvj(
    segment="platform", goal="Rolling a release back loses no customer data",
    mrr=50000, scenario="002#9",
)  # fmt: skip

VIEW_MIGRATION = "usage_daily"


async def view_version(dsn: str) -> int:
    """The version of the migration that makes usage_daily (the newest of this area)."""
    (version,) = [v for v, name, _ in await status(dsn) if name == VIEW_MIGRATION]
    return version


async def usage_rows(conn: asyncpg.Connection) -> list[tuple[object, ...]]:
    rows = await conn.fetch(
        "SELECT id, tenant_id, kind, quantity, cost_micros FROM usage_records ORDER BY id"
    )
    return [tuple(row) for row in rows]


async def cli(dsn: str, *args: str, **env: str) -> tuple[int, str]:
    """Run `python -m apex.data <args>` on `dsn`; its exit code and output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "apex.data",
        *args,
        env={**os.environ, "APEX_DATABASE_URL": dsn, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()


async def seed(conn: asyncpg.Connection) -> None:
    tenant, user = str(uuid.uuid4()), str(uuid.uuid4())
    for quantity in (3, 5, 8):
        await write_usage(conn, tenant, user, quantity=quantity, kind=f"k{quantity}")


@SEQUENCING
@pytest.mark.L2
async def test_lock_timeout_bounds_a_migration_behind_traffic(empty_database: str) -> None:
    await migrate(empty_database)
    version = await view_version(empty_database)
    reader = await asyncpg.connect(empty_database)
    try:
        reading = reader.transaction()
        await reading.start()
        # A long read holds ACCESS SHARE on the view; dropping it needs ACCESS EXCLUSIVE.
        assert await reader.fetchval("SELECT count(*) FROM usage_daily") == 0
        with pytest.raises(MigrationError, match="APEX_MIGRATION_LOCK_TIMEOUT"):
            await rollback(empty_database, version - 1, lock_timeout=0.2)
        # The reader was not disturbed, and nothing of the migration was undone.
        assert await reader.fetchval("SELECT count(*) FROM usage_daily") == 0
        await reading.commit()
        assert (version, VIEW_MIGRATION, True) in await status(empty_database)

        assert await rollback(empty_database, version - 1, lock_timeout=0.2) == [version]
    finally:
        await reader.close()


@SEQUENCING
@pytest.mark.L2
async def test_rollback_and_migrate_again_keep_the_records(empty_database: str) -> None:
    await migrate(empty_database)
    version = await view_version(empty_database)
    conn = await asyncpg.connect(empty_database)
    try:
        await seed(conn)
        before = await usage_rows(conn)

        assert await rollback(empty_database, version - 1) == [version]
        assert await conn.fetchval("SELECT to_regclass('usage_daily')") is None
        assert await usage_rows(conn) == before

        assert await migrate(empty_database) == [version]
        # Re-made WITH DATA: the view already holds the kept records.
        assert await conn.fetchval("SELECT sum(quantity) FROM usage_daily") == 16
        assert await usage_rows(conn) == before
    finally:
        await conn.close()


@ROLLBACK
@pytest.mark.L3
async def test_cli_rollback_keeps_data_and_honours_the_lock_timeout(empty_database: str) -> None:
    code, output = await cli(empty_database, "migrate")
    assert code == 0, output
    version = await view_version(empty_database)
    conn = await asyncpg.connect(empty_database)
    try:
        await seed(conn)
        before = await usage_rows(conn)
        async with conn.transaction():
            assert await conn.fetchval("SELECT count(*) FROM usage_daily") == 0
            code, output = await cli(
                empty_database,
                "rollback",
                "--to",
                str(version - 1),
                APEX_MIGRATION_LOCK_TIMEOUT="0.2",
            )
            assert code == 1, output
            assert "APEX_MIGRATION_LOCK_TIMEOUT" in output
        assert (version, VIEW_MIGRATION, True) in await status(empty_database)

        code, output = await cli(empty_database, "rollback", "--to", str(version - 1))
        assert code == 0, output
        assert await conn.fetchval("SELECT to_regclass('usage_daily')") is None
        assert await usage_rows(conn) == before

        code, output = await cli(empty_database, "migrate")
        assert code == 0, output
        assert await conn.fetchval("SELECT sum(quantity) FROM usage_daily") == 16
        assert await usage_rows(conn) == before
    finally:
        await conn.close()
