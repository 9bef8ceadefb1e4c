"""Migrations against a real PostgreSQL: up, down, up again, drift, concurrency."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import asyncpg
import pytest

from apex.data.migrations import MigrationError, load_migrations, migrate, rollback, status


async def _tables(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return {row["tablename"] for row in rows}


async def test_up_down_up_keeps_the_data_the_down_migrations_do_not_drop(
    empty_database: str,
) -> None:
    head = load_migrations()[-1].version
    assert [applied for _, _, applied in await status(empty_database)] == [False] * head

    assert await migrate(empty_database) == list(range(1, head + 1))
    assert await migrate(empty_database) == []
    assert {"users", "api_keys", "audit_events", "tenant_settings"} <= await _tables(empty_database)

    user_id = uuid.uuid4()
    conn = await asyncpg.connect(empty_database)
    try:
        await conn.execute(
            "INSERT INTO users (id, email, tier) VALUES ($1, 'keep@example.com', 'pro')", user_id
        )
    finally:
        await conn.close()

    # Back to version 1: audit_events and tenant_settings go, users (0001) stay.
    assert await rollback(empty_database, 1) == list(range(head, 1, -1))
    tables = await _tables(empty_database)
    assert "users" in tables
    assert not {"audit_events", "tenant_settings"} & tables
    assert [(v, applied) for v, _, applied in await status(empty_database)][:2] == [
        (1, True),
        (2, False),
    ]

    assert await migrate(empty_database) == list(range(2, head + 1))
    conn = await asyncpg.connect(empty_database)
    try:
        assert (
            await conn.fetchval("SELECT email FROM users WHERE id = $1", user_id)
            == "keep@example.com"
        )
    finally:
        await conn.close()

    assert await rollback(empty_database, 0) == list(range(head, 0, -1))
    assert await _tables(empty_database) == {"apex_schema_migrations"}


async def test_migrate_to_a_target_stops_there(empty_database: str) -> None:
    assert await migrate(empty_database, target=1) == [1]
    assert [applied for _, _, applied in await status(empty_database)][:2] == [True, False]
    with pytest.raises(MigrationError, match=r"known versions are 1\.\."):
        await migrate(empty_database, target=999)


async def test_an_applied_migration_that_changed_is_an_error(empty_database: str) -> None:
    await migrate(empty_database)
    shipped = load_migrations()
    edited = [dataclasses.replace(shipped[0], checksum="0" * 64), *shipped[1:]]
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate(empty_database, migrations=edited)
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await rollback(empty_database, 0, migrations=edited)


async def test_a_failing_migration_leaves_nothing_half_applied(empty_database: str) -> None:
    shipped = load_migrations()
    broken = dataclasses.replace(shipped[1], up=shipped[1].up + "\nSELECT no_such_function();")
    with pytest.raises(MigrationError, match="0002_audit_events \\(up\\) failed"):
        await migrate(empty_database, migrations=[shipped[0], broken])
    assert [applied for _, _, applied in await status(empty_database)][:2] == [True, False]
    assert "audit_events" not in await _tables(empty_database)


async def test_concurrent_migrations_apply_each_version_once(empty_database: str) -> None:
    results = await asyncio.gather(*(migrate(empty_database) for _ in range(4)))
    applied = sorted(version for result in results for version in result)
    assert applied == [m.version for m in load_migrations()]
