"""001#62 database backup and restore: `apex.data.backup` with the real `pg_dump -Fc`
and `pg_restore` (processes), the restored database compared row for row.

The rules under test (contract-data.md, Behaviours: Backup and restore): a dump of a
database with data in every area (records of several tenants under row-level security,
outbox, credits, transfers, the materialized view) restores into an empty database
equal row for row, table by table; the validation (`compare`) notices a difference; a
damaged archive is refused with the tool's error and leaves the target as it was.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from apex.data.backup import BackupError, compare, dump, restore
from db_tests.stores import write_usage

BACKUP = pytest.mark.bvj(
    segment="enterprise", goal="A lost database is restored with every record",
    mrr=8000, scenario="001#62",
)  # fmt: skip
pytestmark = [BACKUP, pytest.mark.L3]


@pytest.fixture
async def restore_target(flow_database: str) -> AsyncIterator[str]:
    """DSN of a second, empty database on the same server (dropped after the test):
    where the backup of `flow_database` (the test's own, which no relay touches) goes."""
    name = f"restore_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(flow_database)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    yield urlunsplit(urlsplit(flow_database)._replace(path=f"/{name}"))
    admin = await asyncpg.connect(flow_database)
    try:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await admin.close()


async def rows_of(dsn: str, table: str) -> list[tuple[object, ...]]:
    """Every row of `table`, in a canonical order (as the kit's superuser: all tenants)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(f"SELECT * FROM {table} t ORDER BY t::text")  # noqa: S608
    finally:
        await conn.close()
    return [tuple(row) for row in rows]


async def fill(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        user = str(uuid.uuid4())
        tenants = [str(uuid.uuid4()) for _ in range(3)]
        for number, tenant in enumerate(tenants, start=1):
            for quantity in range(number * 5):
                await write_usage(conn, tenant, user, quantity=quantity, cost_micros=number)
        await conn.executemany(
            "INSERT INTO tenant_credits (tenant_id, balance_micros) VALUES ($1::uuid, $2)",
            [(tenant, 1000 * n) for n, tenant in enumerate(tenants, start=1)],
        )
        await conn.execute(
            "INSERT INTO credit_transfers (id, from_tenant, to_tenant, amount_micros, "
            "idempotency_key, state) VALUES ($1, $2::uuid, $3::uuid, 5, 'k', 'committed')",
            uuid.uuid4(),
            tenants[0],
            tenants[1],
        )
        await conn.execute("REFRESH MATERIALIZED VIEW usage_daily")
    finally:
        await conn.close()


async def test_restore_is_equal_row_for_row(
    flow_database: str, restore_target: str, tmp_path: Path
) -> None:
    await fill(flow_database)
    archive = await dump(flow_database, tmp_path / "apex.dump")
    assert archive.read_bytes()[:5] == b"PGDMP"  # pg_dump's custom format

    await restore(archive, restore_target)

    tables = {c.table: c for c in await compare(flow_database, restore_target)}
    assert all(c.equal for c in tables.values()), [c for c in tables.values() if not c.equal]
    for table in ("usage_records", "outbox", "tenant_credits", "credit_transfers", "usage_daily"):
        source = await rows_of(flow_database, table)
        assert source, f"{table} has rows to compare"
        assert await rows_of(restore_target, table) == source
    assert tables["usage_records"].source_rows == 30
    # Row-level security came back too: without a tenant the service's role sees nothing.
    restored = await asyncpg.connect(restore_target)
    try:
        async with restored.transaction():
            await restored.execute("SET LOCAL ROLE apex_data")
            assert await restored.fetchval("SELECT count(*) FROM usage_records") == 0
    finally:
        await restored.close()


async def test_compare_notices_a_difference(
    flow_database: str, restore_target: str, tmp_path: Path
) -> None:
    await fill(flow_database)
    await restore(await dump(flow_database, tmp_path / "apex.dump"), restore_target)
    restored = await asyncpg.connect(restore_target)
    try:
        await restored.execute("UPDATE tenant_credits SET balance_micros = balance_micros + 1")
    finally:
        await restored.close()

    unequal = [c.table for c in await compare(flow_database, restore_target) if not c.equal]
    assert unequal == ["tenant_credits"]


async def test_a_damaged_archive_is_refused_and_changes_nothing(
    flow_database: str, restore_target: str, tmp_path: Path
) -> None:
    await fill(flow_database)
    archive = await dump(flow_database, tmp_path / "apex.dump")
    content = archive.read_bytes()
    damaged = tmp_path / "damaged.dump"
    damaged.write_bytes(content[: len(content) // 2])

    with pytest.raises(BackupError, match="pg_restore exited with status"):
        await restore(damaged, restore_target)
    # One transaction: the empty database is still empty.
    conn = await asyncpg.connect(restore_target)
    try:
        assert await conn.fetchval("SELECT to_regclass('usage_records')") is None
    finally:
        await conn.close()
